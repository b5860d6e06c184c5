#!/usr/bin/env bash
# The Go tests of `make test` and `make test-matrix`, against the test environment that
# `.ci/testenv.sh up --matrix` started (make test-matrix runs it first; `all` runs it itself).
#
#   .ci/test.sh all      `.ci/testenv.sh up --matrix` (every part, the Kubernetes cluster too),
#                        every test with TF_ACC=1 under the default terraform (the one the env
#                        file puts first on PATH) and, beside them, `make docs-check` (stale docs
#                        count as a failure), then the matrix subset under each CLI. A
#                        cluster this run started is torn down (`.ci/testenv.sh down
#                        kubernetes`, ~20 s) beside the matrix subset, which runs no Kubernetes
#                        test, or at exit whatever happens (trap); one that was running before
#                        (started by hand) is left running. The other parts keep
#                        running for the next run, as before (make clean-env stops them).
#                        Kubernetes' cost: built once (6-15 min on 2 cores, kept in the state
#                        dir), then ~30 s to start from empty state and 10-20 s to tear down.
#   .ci/test.sh matrix   the matrix subset only: $MATRIX_TESTS in $MATRIX_PKG, under OpenTofu
#                        and under the newest Terraform
#
# Each run goes through internal/testreport: a line per top-level test as it finishes (a
# failure with its output), the -v text in $TEST_LOG (the matrix runs appended), and its own
# summary line. Any failure or skip fails the run (a skipped test counts as failed), as does a
# CLI of the matrix that is missing or a run of no test. The last line counts every
# run: "N passed, N failed". Exits non-zero when anything failed.
#
# Knobs: GO_TEST_FLAGS, TEST_LOG, POSTGRAAS_TESTENV_DIR (the make targets pass them).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="/usr/local/go/bin:$PATH"

# The instance's life, and the ephemeral resource (which, like write-only attributes, needs a
# recent CLI), on the docker and pg_cluster backends. What a CLI sends the provider does not
# depend on the backend; kubernetes, the slowest (~45 s a test, pods of its own), is left to
# the run under the default terraform.
MATRIX_TESTS='^(TestAccMatrix_(docker|pgCluster)|TestAccCredentials_(docker|pgCluster))$'
MATRIX_PKG=./internal/provider
GO_TEST_FLAGS=${GO_TEST_FLAGS:--count=1 -v -timeout 30m -parallel 4}
TEST_LOG=${TEST_LOG:-${POSTGRAAS_TESTENV_DIR:-/tmp/postgraas-testenv}/test.log}

mode=${1:-all}
case "$mode" in
all | matrix) ;;
*) echo "usage: $0 all|matrix" >&2; exit 2 ;;
esac

state=${POSTGRAAS_TESTENV_DIR:-/tmp/postgraas-testenv}
tmp=$(mktemp -d)
kube_down=0
holder=
teardown_pid=
# release_lock releases this run's shared lock on the cluster: its holder is a process of its own
# (see below).
release_lock() {
	if [ -n "$holder" ]; then
		pkill -P "$holder" 2>/dev/null || true
		kill "$holder" 2>/dev/null || true
		wait "$holder" 2>/dev/null || true
		holder=
	fi
}
# teardown_kube stops the cluster if this run started it and no other run uses it: another
# `test.sh all` that came while this one ran holds the lock too (shared), and its tests still need
# the cluster. Call release_lock first.
teardown_kube() {
	[ "$kube_down" = 1 ] || return 0
	kube_down=0
	if flock -n -x "$state/kubernetes-users.lock" true; then
		echo "== tearing down the Kubernetes cluster this run started"
		.ci/testenv.sh down kubernetes || echo "ERROR: '.ci/testenv.sh down kubernetes' failed"
	else
		echo "== another test run uses the Kubernetes cluster this run started: left running (.ci/testenv.sh down kubernetes stops it)"
	fi
}
# wait_teardown waits for a teardown started in the background and prints what it said.
wait_teardown() {
	[ -n "$teardown_pid" ] || return 0
	wait "$teardown_pid" 2>/dev/null || true
	teardown_pid=
	cat "$tmp/teardown.log" 2>/dev/null || true
}
# shellcheck disable=SC2317 # run by the trap
cleanup() {
	release_lock
	wait_teardown
	teardown_kube
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$mode" = all ]; then
	# Each run uses the cluster under a shared lock, so that the run that started it tears it
	# down only when no other run is using it.
	mkdir -p "$state"
	# The shared lock is held by a process of its own (flock -o: its command does not keep the
	# file open), not by this shell: a process this run leaves behind (seen: the private
	# PostgreSQL server of a test whose run was killed) would inherit a descriptor of the
	# shell's and keep the lock, so that later runs think another one still uses the cluster.
	: >>"$state/kubernetes-users.lock"
	# It lives as long as this shell, even one that is killed (tail --pid).
	flock -s -o "$state/kubernetes-users.lock" tail --pid=$$ -f /dev/null &
	holder=$!
	until pgrep -P "$holder" -x tail >/dev/null; do
		kill -0 "$holder" 2>/dev/null || { echo "ERROR: could not take $state/kubernetes-users.lock" >&2; exit 1; }
		sleep 0.1
	done
	# A cluster that runs already is someone else's (or a test in progress): leave it running.
	if ! .ci/testenv.sh kube-status >/dev/null; then
		kube_down=1
	fi
	# shellcheck disable=SC2086 # a list of flags
	.ci/testenv.sh up ${TESTENV_UP_FLAGS:---matrix} >/dev/null
fi
env_file=$(.ci/testenv.sh env)
# shellcheck disable=SC1090
. "$env_file"
export TF_ACC=1
# A CLI configuration file that does not exist makes OpenTofu print a warning on stdout before
# its version, where terraform-plugin-testing reads it (and fails): no file, no setting.
if [ -n "${TF_CLI_CONFIG_FILE:-}" ] && [ ! -e "$TF_CLI_CONFIG_FILE" ]; then
	echo "TF_CLI_CONFIG_FILE=$TF_CLI_CONFIG_FILE does not exist: unset for the tests"
	unset TF_CLI_CONFIG_FILE
fi

report=$tmp/testreport
counts=$tmp/counts
: >"$counts"
go build -o "$report" ./internal/testreport
mkdir -p "$(dirname "$TEST_LOG")"
: >"$TEST_LOG"

rc=0
failed_with() { [ "$rc" != 0 ] || rc=$1; }

# go_test LABEL VERSION GO_TEST_ARGS...: one run through testreport, under the CLI of that
# version (the matrix tests check it).
go_test() {
	local label=$1 version=$2 before start=$SECONDS
	shift 2
	before=$(wc -l <"$counts")
	# shellcheck disable=SC2086 # GO_TEST_FLAGS is a list of flags
	POSTGRAAS_TEST_CLI_VERSION=$version "$report" -log "$TEST_LOG" -append -label "$label" -counts "$counts" -- \
		go test -json "$@" $GO_TEST_FLAGS || failed_with $?
	if [ "$(wc -l <"$counts")" = "$before" ]; then # testreport itself failed
		echo "$label: testreport counted nothing: 1 failed"
		echo "0 1" >>"$counts"
		failed_with 1
	fi
	echo "($label took $((SECONDS - start)) s)"
}

# matrix_run NAME BIN VERSION PROVIDER_HOST: the subset under BIN, as the env file names it.
# terraform-plugin-testing runs TF_ACC_TERRAFORM_PATH, and serves the provider under test at
# TF_ACC_PROVIDER_HOST (by default Terraform's registry host; OpenTofu puts its own in front of
# "hashicorp/postgraas"), which testenv.sh read from the CLI itself.
matrix_run() {
	local name=$1 bin=$2 version=$3 host=$4
	echo
	if [ -z "$bin" ] || [ ! -x "$bin" ] || [ -z "$version" ] || [ -z "$host" ]; then
		echo "ERROR: no $name CLI of the matrix (the env file names '$bin'): '.ci/testenv.sh up --matrix' builds it"
		echo "$name subset: 0 passed, 1 failed"
		echo "0 1" >>"$counts"
		failed_with 1
		return
	fi
	echo "== $name v$version: $MATRIX_TESTS in $MATRIX_PKG"
	TF_ACC_TERRAFORM_PATH=$bin TF_ACC_PROVIDER_HOST=$host \
		go_test "$name v$version subset" "$version" "$MATRIX_PKG" -run "$MATRIX_TESTS"
}

t0=$(date +%s)
if [ "$mode" = all ]; then
	echo "== all tests, terraform v${POSTGRAAS_TEST_TERRAFORM_VERSION:-?} ($(command -v terraform))"
	# The docs check (a build and a schema dump, ~12 s alone) runs beside the tests instead
	# of before them, where it was 12 s of make test's wall time.
	make -s --no-print-directory docs-check >"$tmp/docs-check.log" 2>&1 &
	docs_pid=$!
	go_test "terraform v${POSTGRAAS_TEST_TERRAFORM_VERSION:-?}, all tests" "${POSTGRAAS_TEST_TERRAFORM_VERSION:-}" ./...
	echo "== make docs-check (beside the tests)"
	docs_rc=0
	wait "$docs_pid" || docs_rc=$?
	cat "$tmp/docs-check.log"
	if [ "$docs_rc" != 0 ]; then
		echo "docs-check: 0 passed, 1 failed"
		echo "0 1" >>"$counts"
		failed_with 1
	fi
	# The matrix subset runs no Kubernetes test: the cluster goes down beside it (its
	# teardown is mostly waiting for processes to stop), and says so when the subset is done.
	release_lock
	teardown_kube >"$tmp/teardown.log" 2>&1 &
	teardown_pid=$!
	kube_down=0 # the background job's to do now
fi
matrix_run tofu "${POSTGRAAS_TEST_TOFU:-}" "${POSTGRAAS_TEST_TOFU_VERSION:-}" "${POSTGRAAS_TEST_TOFU_PROVIDER_HOST:-}"
matrix_run terraform "${POSTGRAAS_TEST_TERRAFORM_NEWEST:-}" "${POSTGRAAS_TEST_TERRAFORM_NEWEST_VERSION:-}" \
	"${POSTGRAAS_TEST_TERRAFORM_NEWEST_PROVIDER_HOST:-}"

wait_teardown
echo
echo "log: $TEST_LOG; took $(($(date +%s) - t0)) s"
awk '{ p += $1; f += $2 } END { printf "%d passed, %d failed\n", p, f }' "$counts"
exit "$rc"
