#!/usr/bin/env bash
# make demo: build the provider, start a Docker engine (docker: the provider keeps
# its meta DB in a container there) or a PostgreSQL (pg_cluster: meta DB and
# cluster), apply examples/quickstart (docker) or examples/quickstart-pg-cluster
# (BACKEND=pg_cluster), and show how to connect.
# `demo.sh destroy` removes what it made.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
backend="${BACKEND:-docker}"
case "$backend" in
  # Only what the demo needs: no sshd, nothing in ~/.ssh (the tests' ssh part).
  docker) example=quickstart; parts=(docker terraform) ;; # the meta DB lives in a container
  pg_cluster) example=quickstart-pg-cluster; parts=(pg terraform) ;;
  *) echo "BACKEND must be docker or pg_cluster, not '$backend'" >&2; exit 2 ;;
esac

env_file="$("$root/.ci/testenv.sh" up "${parts[@]}" | tail -n 1)"
# shellcheck disable=SC1090
. "$env_file"
# The docker demo needs no meta DB server: without these the provider finds or
# makes its meta DB container on the engine.
[ "$backend" != docker ] || unset "${!POSTGRAAS_METADB_@}"

demo="${POSTGRAAS_TESTENV_DIR:-/tmp/postgraas-testenv}/demo"
work="$demo/$example"
mkdir -p "$demo/bin" "$work"

echo "==> building the provider" >&2
(cd "$root" && go build -o "$demo/bin/terraform-provider-postgraas" .)

# The registry is not needed: Terraform runs the provider just built.
cat > "$demo/terraformrc" <<RC
provider_installation {
  dev_overrides {
    "postgraas/postgraas" = "$demo/bin"
  }
  direct {}
}
RC
export TF_CLI_CONFIG_FILE="$demo/terraformrc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
# No container registry may be reachable here: use the image the test
# environment has (the official one when it could be pulled).
export POSTGRAAS_DOCKER_IMAGE="${POSTGRAAS_DOCKER_IMAGE:-$POSTGRAAS_TEST_IMAGE}"
export POSTGRAAS_DOCKER_BIND_ADDRESS="${POSTGRAAS_DOCKER_BIND_ADDRESS:-127.0.0.1}"

# The example runs in a work directory of its own, so its state stays out of the tree.
cp "$root/examples/$example/main.tf" "$work/main.tf"
if [ ! -s "$demo/db_password" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' > "$demo/db_password")
fi
TF_VAR_db_password="$(cat "$demo/db_password")"
export TF_VAR_db_password

if [ "${1:-}" = destroy ]; then
  terraform -chdir="$work" destroy -auto-approve -input=false
  echo
  echo "The demo's instance is gone. What the demo started keeps running for the next demo or test:"
  [[ " ${parts[*]} " != *" pg "* ]] || echo "  PostgreSQL on ${POSTGRAAS_METADB_HOST:-127.0.0.1}:${POSTGRAAS_METADB_PORT:-55432} (meta DB and cluster)"
  [[ " ${parts[*]} " != *" docker "* ]] || echo "  the Docker engine at $DOCKER_HOST and the image $POSTGRAAS_TEST_IMAGE"
  [ "$backend" != docker ] || echo "  the provider's meta DB container on that engine (never removed by the provider)"
  echo "Stop all of it and remove its data and images with: make clean-env"
  echo "(or only stop the servers, keeping their data: .ci/testenv.sh down)"
  exit 0
fi

echo "==> terraform apply in $work ($backend backend)" >&2
terraform -chdir="$work" apply -auto-approve -input=false

uri="$(terraform -chdir="$work" output -raw connection_uri)"
echo
echo "==> connecting with psql, right after apply"
if command -v psql >/dev/null; then
  psql "$uri" -c "SELECT current_user, current_database(), version()"
else
  # No PostgreSQL client here: the image's psql, on the host's network, the
  # password on stdin (not in the container's config or a command line).
  printf '%s\n' "$TF_VAR_db_password" | docker run --rm -i --network host --entrypoint sh "$POSTGRAAS_DOCKER_IMAGE" -c \
    'IFS= read -r PGPASSWORD; export PGPASSWORD; exec psql -X -h "$1" -p "$2" -U app_owner -d app -c "SELECT current_user, current_database(), version()"' \
    sh "$(terraform -chdir="$work" output -raw host)" "$(terraform -chdir="$work" output -raw port)"
fi
echo
echo "Connect yourself with (the password is in the connection_uri output):"
echo "  psql \"\$(terraform -chdir=$work output -raw connection_uri)\""
echo "or: $(terraform -chdir="$work" output -raw psql)   (password: $demo/db_password)"
echo "Remove it with: make demo-destroy${BACKEND:+ BACKEND=$BACKEND}"
