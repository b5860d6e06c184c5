#!/usr/bin/env bash
# make install: builds the provider and installs it where a plain `terraform init` or
# `tofu init` finds it without any network: the implied local filesystem mirror
# ($HOME/.terraform.d/plugins, read by both CLIs when the CLI configuration has no
# provider_installation block), as HOSTNAME/postgraas/postgraas/VERSION/OS_ARCH.
#
# HOSTNAME is the registry host that the CLI itself resolves `source = "postgraas/postgraas"`
# to; it is read from each CLI found (`terraform providers` on a scratch configuration needs
# no network), never written here.
#
# Knobs: POSTGRAAS_PLUGIN_DIR (default $HOME/.terraform.d/plugins), POSTGRAAS_INSTALL_CLIS
# (CLIs to install for, default: terraform and tofu, those on PATH), VERSION (default:
# .ci/version.sh, from git describe).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
plugin_dir=${POSTGRAAS_PLUGIN_DIR:-$HOME/.terraform.d/plugins}
version=${VERSION:-$("$root/.ci/version.sh")}
os_arch="$(go env GOOS)_$(go env GOARCH)"
bin=$root/bin/terraform-provider-postgraas

clis=()
for c in ${POSTGRAAS_INSTALL_CLIS:-terraform tofu}; do
	if p=$(command -v "$c"); then clis+=("$p"); fi
done
if [ "${#clis[@]}" = 0 ]; then
	echo "make install: neither terraform nor tofu is on PATH. The install location depends on the registry host" >&2
	echo "the CLI uses, which is read from the CLI: put one on PATH (or name it in POSTGRAAS_INSTALL_CLIS)." >&2
	exit 1
fi

echo "==> building $bin, version $version" >&2
(cd "$root" && go build -trimpath -ldflags "-X main.version=$version" -o "$bin" .)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
printf '%s\n' 'terraform {' '  required_providers {' '    postgraas = { source = "postgraas/postgraas" }' '  }' '}' >"$scratch/main.tf"

declare -A done_hosts=()
for cli in "${clis[@]}"; do
	# provider[HOST/postgraas/postgraas]; no init, no network.
	addr=$(cd "$scratch" && CHECKPOINT_DISABLE=1 "$cli" providers -no-color 2>/dev/null |
		sed -n 's/.*provider\[\(.*\/postgraas\/postgraas\)\].*/\1/p' | sed -n 1p)
	host=${addr%/postgraas/postgraas}
	if [ -z "$addr" ] || [ -z "$host" ] || [ "$host" = "$addr" ]; then
		echo "make install: could not read the provider address $cli resolves postgraas/postgraas to" >&2
		exit 1
	fi
	if [ -z "${done_hosts[$host]:-}" ]; then
		base=$plugin_dir/$host/postgraas/postgraas
		# Builds of other commits carry other versions with the same precedence (only the build
		# metadata differs): keep one, so `init` has nothing to choose between.
		if [ -d "$base" ]; then
			find "$base" -mindepth 1 -maxdepth 1 -type d ! -name "$version" -exec rm -rf {} +
		fi
		dest=$base/$version/$os_arch
		mkdir -p "$dest"
		install -m 0755 "$bin" "$dest/terraform-provider-postgraas_v$version"
		echo "installed $addr $version for $("$cli" version 2>/dev/null | sed -n 1p) in $dest" >&2
		done_hosts[$host]=1
	else
		echo "$("$cli" version 2>/dev/null | sed -n 1p) uses the same install ($host)" >&2
	fi
done

cat >&2 <<MSG

A configuration with
  terraform { required_providers { postgraas = { source = "postgraas/postgraas" } } }
now initialises offline with \`terraform init\` (or \`tofu init\`). After installing another build, run
\`terraform init -upgrade\` in configurations that were initialised before (their lock file names the old one).
If your CLI configuration has a provider_installation block, add a filesystem_mirror for $plugin_dir to it.
MSG
