#!/usr/bin/env bash
# A generic CI job: a database of its own for one run, the tests against it,
# and the database destroyed afterwards, also when the tests fail or the job is
# cancelled with SIGTERM/SIGINT (what CI systems send first).
#
#   CI_RUN_ID=1234 ./ci-job.sh [test command...]
#
# The test command gets DATABASE_URL (and PGHOST, PGPORT, PGDATABASE, PGUSER,
# PGPASSWORD, PGSSLMODE); without one, the job only checks that the database
# takes a login (psql). The provider's settings come from the job's environment:
# POSTGRAAS_BACKEND, POSTGRAAS_METADB_* and POSTGRAAS_PG_CLUSTER_* or DOCKER_HOST.
set -euo pipefail

: "${CI_RUN_ID:?set CI_RUN_ID to the id of this run in the CI system}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tf=${TERRAFORM:-terraform} # or tofu

export TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1
export TF_VAR_run_id=$CI_RUN_ID
# A password for this run only; it never leaves the job's environment and state.
if [ -z "${TF_VAR_db_password:-}" ]; then
	TF_VAR_db_password=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
	export TF_VAR_db_password
fi

# The configuration and its state in a directory of this run's own, so that
# jobs on one runner do not share state.
work=$(mktemp -d)
cp "$here"/*.tf "$work"/

destroy() {
	local rc=$?
	trap - EXIT INT TERM
	echo "==> destroying ci-$CI_RUN_ID" >&2
	if ! "$tf" -chdir="$work" destroy -auto-approve -no-color; then
		echo "ERROR: destroy failed: the state is kept in $work for a retry" >&2
		exit 1
	fi
	rm -rf "$work"
	exit "$rc"
}
trap destroy EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

"$tf" -chdir="$work" init -no-color >/dev/null
echo "==> creating ci-$CI_RUN_ID" >&2
"$tf" -chdir="$work" apply -auto-approve -no-color

DATABASE_URL=$("$tf" -chdir="$work" output -raw connection_uri)
PGHOST=$("$tf" -chdir="$work" output -raw host)
PGPORT=$("$tf" -chdir="$work" output -raw port)
PGSSLMODE=$("$tf" -chdir="$work" output -raw sslmode)
PGDATABASE=$("$tf" -chdir="$work" output -raw db_name)
PGUSER=$("$tf" -chdir="$work" output -raw username)
export DATABASE_URL PGHOST PGPORT PGSSLMODE PGDATABASE PGUSER PGPASSWORD=$TF_VAR_db_password

echo "==> tests" >&2
if [ "$#" -gt 0 ]; then
	"$@"
else
	psql -X -v ON_ERROR_STOP=1 -c 'SELECT current_user, current_database()'
fi
