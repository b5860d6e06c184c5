#!/usr/bin/env bash
# Prints the provider's version, from `git describe` (see README, "Install"):
#   at a tag vX.Y.Z, clean tree        X.Y.Z
#   N commits after vX.Y.Z             X.Y.Z+N.gHASH     (build metadata: not a pre-release,
#   uncommitted changes                ...+...dirty       so a plain `terraform init` takes it)
#   no tag yet                         0.0.0+N.gHASH
#   not a git checkout                 0.0.0+unknown
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! git rev-parse --git-dir >/dev/null 2>&1; then
	echo 0.0.0+unknown
	exit 0
fi
dirty=""
git diff --quiet HEAD -- 2>/dev/null || dirty=dirty
if d=$(git describe --tags --match 'v[0-9]*.[0-9]*.[0-9]*' --long 2>/dev/null); then
	# vX.Y.Z-N-gHASH (the tag itself may contain "-": a pre-release such as v1.0.0-rc.1)
	hash=${d##*-}
	rest=${d%-*}
	n=${rest##*-}
	base=${rest%-*}
	base=${base#v}
else
	base=0.0.0
	n=$(git rev-list --count HEAD)
	hash=g$(git rev-parse --short HEAD)
fi
meta=()
[ "$n" = 0 ] || meta+=("$n" "$hash")
[ -z "$dirty" ] || meta+=("$dirty")
if [ "${#meta[@]}" = 0 ]; then
	echo "$base"
else
	(IFS=.; echo "$base+${meta[*]}")
fi
