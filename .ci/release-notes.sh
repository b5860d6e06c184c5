#!/usr/bin/env bash
# Prints CHANGELOG.md's section for VERSION (its "## VERSION ..." heading up to the next "## "),
# the release notes GoReleaser publishes. Fails when there is no such section or it is empty.
set -euo pipefail
v=${1:?usage: $0 VERSION (e.g. 0.1.0)}
v=${v#v}
notes=$(awk -v v="$v" '
	/^## / { if (on) exit; split($2, a, " "); if (a[1] == v) { on = 1; next } }
	on { print }
' "$(dirname "${BASH_SOURCE[0]}")/../CHANGELOG.md")
if [ -z "$(printf '%s' "$notes" | tr -d '[:space:]')" ]; then
	echo "no CHANGELOG.md section for $v" >&2
	exit 1
fi
printf '%s\n' "$notes"
