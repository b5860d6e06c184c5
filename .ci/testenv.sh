#!/usr/bin/env bash
# Test environment of terraform-provider-postgraas: a PostgreSQL 15 server (meta DB + the
# "pg_cluster" backend), a Docker engine and a PostgreSQL image (the "docker" backend), an
# sshd on loopback through which the same engine is reached as ssh://postgraas-testenv-ssh,
# and a single-node Kubernetes v1.34 running that image (the "kubernetes" backend).
#
#   .ci/testenv.sh up [--matrix] [PART...]
#                          idempotent: install/start what is missing, write an env file and
#                          print its path on the last line of stdout (progress goes to stderr).
#                          PARTs: pg, docker, ssh, terraform, kubernetes; none means all of
#                          them (the tests). ssh and kubernetes bring docker up too.
#                          `up` of all writes env.sh; `up` of some writes env-PART-PART.sh, so a
#                          demo never takes from the tests' file what it did not start.
#                          --matrix also builds (once) the OpenTofu and newest Terraform CLIs
#                          that `make test` runs a subset of the acceptance tests under
#   .ci/testenv.sh env     print the path of env.sh (after `up`)
#   .ci/testenv.sh down [PART...]
#                          stop what `up` started of those parts (none: all): the PostgreSQL
#                          server, the sshd, the dockerd; the Kubernetes cluster, its workloads
#                          and data, undoing its changes to the host (bridge, route, nft tables,
#                          cgroups, mounts, sysctls)
#   .ci/testenv.sh clean   `down`, and before that remove the containers and volumes the tests
#                          and demos made, the stand-in images and the state dir (built CLIs and
#                          Kubernetes binaries are kept unless POSTGRAAS_CLEAN_BUILDS=1)
#   .ci/testenv.sh kube-status
#                          print "running" (exit 0) when a component of the cluster runs, else
#                          "stopped" (exit 3)
#   .ci/testenv.sh kube-smoke
#                          check the running cluster (~15 s): a StatefulSet of the test image with
#                          a PVC becomes Ready, psql from the host logs in through a ClusterIP and
#                          a NodePort Service; the objects are deleted again
#   .ci/testenv.sh terraform
#                          print the path of a terraform CLI, building it when none is on PATH
#   .ci/testenv.sh matrix  print the paths of the OpenTofu and newest Terraform CLIs, building
#                          them when the state dir lacks them
#   .ci/testenv.sh verify-image [IMAGE]
#                          smoke-test a postgres image (login over a published port, bad tag,
#                          missing POSTGRES_PASSWORD) and print timings
#
# Works from a fresh Debian 12 machine as root (CI): installs Debian packages only when a
# thing is missing. No host name of any package mirror is written here: the mirror used to
# build the stand-in image is read from the machine's apt sources at run time.
#
# Knobs: POSTGRAAS_TESTENV_DIR (state dir, default /tmp/postgraas-testenv),
#        POSTGRAAS_TEST_PG_PORT (default 55432), POSTGRAAS_TEST_IMAGE (use this image),
#        DOCKER_HOST (use this engine if it answers), POSTGRAAS_TEST_SSH_PORT (default 2222).
set -euo pipefail

STATE=${POSTGRAAS_TESTENV_DIR:-/tmp/postgraas-testenv}
PG_PORT=${POSTGRAAS_TEST_PG_PORT:-55432}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ENV_FILE=$STATE/env.sh

PG_BIN=/usr/lib/postgresql/15/bin
PG_DIR=$STATE/pg            # owned by the postgres OS user
PGDATA_DIR=$PG_DIR/data
PG_SOCK=$PG_DIR/sock
PG_LOG=$PG_DIR/postgres.log
SECRETS=$STATE/secrets      # root only

DOCKERD_LOG=$STATE/dockerd.log
DOCKERD_PID=$STATE/dockerd.pid
STANDIN_IMAGE=postgraas-standin/postgres:15
STANDIN_ROOTFS_IMAGE=postgraas-standin/postgres:15-rootfs # debootstrap + import, kept as base
STANDIN_LABEL=org.postgraas.standin.entrypoint-sha256
OFFICIAL_IMAGE=postgres:17

SSH_PORT=${POSTGRAAS_TEST_SSH_PORT:-2222}
SSH_DIR=$STATE/ssh          # root only: sshd config, host key, client key, known_hosts, log
SSH_ALIAS=postgraas-testenv-ssh
SSHD_PID=$SSH_DIR/sshd.pid
SSHD_LOG=$SSH_DIR/sshd.log

# The caller's own PATH decides which terraform is used (ensure_terraform).
CALLER_PATH=${PATH:-}
export PATH="$PG_BIN:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
export DEBIAN_FRONTEND=noninteractive
unset PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE PGSERVICE PGSSLMODE

log() { printf '[testenv %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf '[testenv %s] ERROR: %s\n' "$(date +%T)" "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# POSIX-safe single quoting (the env file may be sourced by sh or bash).
shquote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

need_root() { [ "$(id -u)" = 0 ] || die "$1 is missing and installing it needs root (run as root, or provide it)"; }

APT_UPDATED=0
apt_install() {
	need_root "$*"
	command -v apt-get >/dev/null || die "$* is missing and this is not a Debian-like system (no apt-get)"
	local t
	if [ "$APT_UPDATED" = 0 ]; then
		t=$(now)
		log "apt-get update"
		apt-get update -q >&2 || die "apt-get update failed"
		APT_UPDATED=1
		log "apt-get update took $(since "$t") s"
	fi
	t=$(now)
	log "apt-get install $*"
	apt-get install -y -q --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
	log "apt-get install $* took $(since "$t") s"
}

as_postgres() { runuser -u postgres -- "$@"; }

# ---------------------------------------------------------------- PostgreSQL server

ensure_pg_binaries() {
	local b missing=0
	for b in initdb pg_ctl postgres psql; do
		command -v "$b" >/dev/null || missing=1
	done
	if [ "$missing" = 1 ]; then
		# Keep the package from creating and starting a "main" cluster we do not need.
		if [ ! -e /etc/postgresql-common/createcluster.conf ] && [ "$(id -u)" = 0 ]; then
			mkdir -p /etc/postgresql-common/createcluster.d
			echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/postgraas-testenv.conf
		fi
		apt_install postgresql-15 postgresql-client-15
	fi
	for b in initdb pg_ctl postgres psql; do
		command -v "$b" >/dev/null || die "$b not found after installing postgresql-15 (looked in $PG_BIN and PATH)"
	done
	if ! getent passwd postgres >/dev/null; then
		need_root "the postgres OS user"
		log "creating OS user postgres"
		useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
	fi
}

# Random password from [A-Za-z0-9]; the meta DB one also carries @ / : ' to prove escaping.
gen_password() {
	local p
	p=$(head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20)
	printf '%s%s' "${1:-}" "$p"
}

load_password() { # name [prefix]
	local f=$SECRETS/$1
	if [ ! -s "$f" ]; then
		(umask 077 && gen_password "${2:-}" >"$f.tmp" && mv "$f.tmp" "$f")
	fi
	cat "$f"
}

pg_conf_content() {
	cat <<EOF
# Written by .ci/testenv.sh on each \`up\`; included from postgresql.conf.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
unix_socket_permissions = 0777
password_encryption = 'scram-sha-256'
max_connections = 300
logging_collector = off
log_connections = on
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
# A throw-away test server: trade durability for speed (CREATE/DROP DATABASE are frequent).
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

pg_hba_content() {
	cat <<'EOF'
# Written by .ci/testenv.sh. Unix socket (state dir) for setup only; TCP needs a password.
local all all trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
}

pg_running() { as_postgres pg_ctl -D "$PGDATA_DIR" status >/dev/null 2>&1; }

ensure_pg_server() {
	ensure_pg_binaries
	mkdir -p "$STATE"
	chmod 755 "$STATE"
	as_postgres test -x "$STATE" ||
		die "the postgres OS user cannot reach $STATE (a parent directory is not searchable); choose another POSTGRAAS_TESTENV_DIR"
	mkdir -p "$PG_DIR" "$PG_SOCK"
	chown postgres: "$PG_DIR" "$PG_SOCK"
	chmod 755 "$PG_DIR" "$PG_SOCK"

	if [ ! -s "$PGDATA_DIR/PG_VERSION" ]; then
		if [ -e "$PGDATA_DIR" ]; then
			log "removing half-initialised data dir $PGDATA_DIR"
			rm -rf "$PGDATA_DIR"
		fi
		local t; t=$(now)
		log "initdb $PGDATA_DIR"
		as_postgres initdb -D "$PGDATA_DIR" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
			--auth-local=trust --auth-host=scram-sha-256 --no-sync >"$PG_DIR/initdb.log" 2>&1 ||
			{ cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
		log "initdb took $(since "$t") s"
	fi

	# Configuration (re-written each time; a change restarts a running server).
	local conf=$PGDATA_DIR/postgraas-testenv.conf changed=0
	if [ "$(cat "$conf" 2>/dev/null)" != "$(pg_conf_content)" ]; then
		pg_conf_content >"$conf"; changed=1
	fi
	if [ "$(cat "$PGDATA_DIR/pg_hba.conf" 2>/dev/null)" != "$(pg_hba_content)" ]; then
		pg_hba_content >"$PGDATA_DIR/pg_hba.conf"; changed=1
	fi
	grep -qx "include_if_exists = 'postgraas-testenv.conf'" "$PGDATA_DIR/postgresql.conf" ||
		{ echo "include_if_exists = 'postgraas-testenv.conf'" >>"$PGDATA_DIR/postgresql.conf"; changed=1; }
	chown postgres: "$conf" "$PGDATA_DIR/pg_hba.conf"
	touch "$PG_LOG"
	chown postgres: "$PG_LOG"

	if pg_running; then
		if [ "$changed" = 1 ]; then
			log "configuration changed: restarting PostgreSQL"
			as_postgres pg_ctl -D "$PGDATA_DIR" -l "$PG_LOG" -m fast -w -t 60 restart >&2 9>&- ||
				{ tail -n 30 "$PG_LOG" >&2; die "PostgreSQL restart failed (log: $PG_LOG)"; }
		else
			log "PostgreSQL already running (data dir $PGDATA_DIR, port $PG_PORT)"
		fi
	else
		local t; t=$(now)
		log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
		# pg_ctl detaches the postmaster (setsid) and points its output at the log file.
		as_postgres pg_ctl -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 start >&2 9>&- ||
			{ tail -n 30 "$PG_LOG" >&2; die "PostgreSQL did not start (log: $PG_LOG)"; }
		log "PostgreSQL started in $(since "$t") s"
	fi

	mkdir -p "$SECRETS"
	chmod 700 "$SECRETS"
	PW_POSTGRES=$(load_password postgres)
	PW_META=$(load_password postgraas "M@t/a:'")
	PW_ADMIN=$(load_password postgraas_admin)

	# Roles and the meta DB, via the unix socket (trust). psql variables quote the passwords.
	psql -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres \
		-v pw_postgres="$PW_POSTGRES" -v pw_meta="$PW_META" -v pw_admin="$PW_ADMIN" >&2 <<'SQL' ||
SET client_min_messages = warning;
ALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD :'pw_postgres';
SELECT 'CREATE ROLE postgraas' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'postgraas') \gexec
ALTER ROLE postgraas WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'pw_meta';
SELECT 'CREATE DATABASE postgraas OWNER postgraas' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'postgraas') \gexec
SELECT 'CREATE ROLE postgraas_admin' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'postgraas_admin') \gexec
ALTER ROLE postgraas_admin WITH LOGIN CREATEDB CREATEROLE NOSUPERUSER PASSWORD :'pw_admin';
SQL
		die "setting up roles / meta DB failed"

	# Wait until each role can log in over TCP with its password.
	local t; t=$(now)
	wait_tcp_login postgres "$PW_POSTGRES" postgres
	wait_tcp_login postgraas "$PW_META" postgraas
	wait_tcp_login postgraas_admin "$PW_ADMIN" postgres
	log "TCP password logins OK (postgres, postgraas, postgraas_admin) after $(since "$t") s"
}

wait_tcp_login() { # user password dbname
	for _ in $(seq 1 300); do # 300 x 0.1 s
		if PGPASSWORD=$2 psql -X -At -c 'SELECT 1' \
			"host=127.0.0.1 port=$PG_PORT user=$1 dbname=$3 sslmode=disable connect_timeout=2" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	PGPASSWORD=$2 psql -X -At -c 'SELECT 1' "host=127.0.0.1 port=$PG_PORT user=$1 dbname=$3 sslmode=disable" >&2 || true
	die "no TCP password login as $1 to 127.0.0.1:$PG_PORT/$3 within 30 s (log: $PG_LOG)"
}

stop_pg() {
	if [ -s "$PGDATA_DIR/PG_VERSION" ] && pg_running; then
		log "stopping PostgreSQL ($PGDATA_DIR)"
		as_postgres pg_ctl -D "$PGDATA_DIR" -m fast -w -t 60 stop >&2
	else
		log "PostgreSQL not running"
	fi
}

# ---------------------------------------------------------------- Docker engine

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

# Sets DOCKER_HOST_CHOSEN.
ensure_docker() {
	if ! command -v docker >/dev/null; then
		apt_install docker.io
	fi
	if [ -n "${DOCKER_HOST:-}" ]; then
		if docker_answers; then
			log "using Docker engine at DOCKER_HOST=$DOCKER_HOST"
			DOCKER_HOST_CHOSEN=$DOCKER_HOST
			return
		fi
		log "DOCKER_HOST=$DOCKER_HOST does not answer; trying the default socket"
	fi
	export DOCKER_HOST=unix:///var/run/docker.sock
	DOCKER_HOST_CHOSEN=$DOCKER_HOST
	if docker_answers; then
		log "using the Docker engine at $DOCKER_HOST"
		return
	fi

	if ! command -v dockerd >/dev/null; then
		apt_install docker.io
	fi
	command -v dockerd >/dev/null || die "no Docker engine answers and dockerd cannot be installed"
	mkdir -p "$STATE"

	if pgrep -x dockerd >/dev/null; then
		log "a dockerd is already running (pid $(pgrep -x dockerd | tr '\n' ' ')); waiting for it to answer"
	else
		need_root "a running Docker engine"
		local t; t=$(now)
		log "starting dockerd (log: $DOCKERD_LOG)"
		# Detach fully: no inherited stdout/stderr (callers read our stdout through a pipe).
		setsid nohup dockerd "${DOCKERD_FLAGS[@]}" </dev/null >>"$DOCKERD_LOG" 2>&1 9>&- &
		echo $! >"$DOCKERD_PID"
		DOCKERD_STARTED_AT=$t
	fi
	for _ in $(seq 1 600); do # 600 x 0.1 s
		if timeout 3 docker info >/dev/null 2>&1; then
			[ -n "${DOCKERD_STARTED_AT:-}" ] && log "dockerd answered after $(since "$DOCKERD_STARTED_AT") s"
			return
		fi
		if [ -n "${DOCKERD_STARTED_AT:-}" ] && ! kill -0 "$(cat "$DOCKERD_PID")" 2>/dev/null; then
			tail -n 40 "$DOCKERD_LOG" >&2 || true
			die "dockerd exited during start-up (log: $DOCKERD_LOG); the docker backend cannot be tested"
		fi
		sleep 0.1
	done
	tail -n 40 "$DOCKERD_LOG" >&2 || true
	die "the Docker engine did not answer within 60 s (log: $DOCKERD_LOG); the docker backend cannot be tested"
}

# Flags for the dockerd we start ourselves. None needed on these machines (Debian 12, kernel
# with nf_tables, cgroup v1, ext4 root): docker.io 20.10 picks overlay2 and the cgroupfs driver,
# its iptables rules (iptables-nft) work, and published ports answer on 127.0.0.1 through
# docker-proxy. Do not add --iptables=false: it would leave ip_forward/NAT unset.
DOCKERD_FLAGS=()

stop_dockerd() {
	local pid
	if [ -s "$DOCKERD_PID" ] && pid=$(cat "$DOCKERD_PID") && kill -0 "$pid" 2>/dev/null &&
		[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
		log "stopping dockerd (pid $pid)"
		kill -TERM "$pid"
			for _ in $(seq 1 300); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && log "dockerd (pid $pid) still running after 30 s"
		rm -f "$DOCKERD_PID"
	else
		log "no dockerd started by this script is running"
	fi
}

# ---------------------------------------------------------------- sshd (ssh:// Docker host)

# The provider reaches an ssh:// engine by running `ssh` from PATH, which runs
# `docker system dial-stdio` on the far side. The far side here is this machine: a dedicated
# sshd on 127.0.0.1:$SSH_PORT (never the system one) that lets root in with a key from the
# state dir. The client side stays in the state dir too: a config file with a Host alias, and
# an `ssh` wrapper that reads only that file (-F), in a directory the tests put first on their
# PATH (POSTGRAAS_TEST_SSH_PATH). Nothing of the user's ~/.ssh is read or written.
SSH_CLIENT_CONFIG=$SSH_DIR/config
SSH_WRAPPER_DIR=$SSH_DIR/bin

ensure_ssh_binaries() {
	if command -v ssh >/dev/null && command -v ssh-keygen >/dev/null && [ -x /usr/sbin/sshd ]; then
		return
	fi
	need_root "openssh-server/openssh-client"
	# The package would start the system sshd on port 22: keep it from doing so, unless the
	# machine already has a policy (e.g. a container's "start nothing").
	local policy=/usr/sbin/policy-rc.d own_policy=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# Temporary, from .ci/testenv.sh (postgraas): start no service.\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		own_policy=1
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt_install openssh-server openssh-client
	if [ "$own_policy" = 1 ]; then
		rm -f "$policy"
		trap - EXIT
	fi
	command -v ssh >/dev/null && [ -x /usr/sbin/sshd ] || die "ssh/sshd not found after installing openssh"
}

sshd_conf_content() {
	cat <<EOF
# Written by .ci/testenv.sh on each \`up\`: the test sshd for ssh:// Docker hosts.
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $SSHD_PID
AuthorizedKeysFile $SSH_DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# No PAM in a sandbox or a container. The state dir may live under world-writable /tmp,
# which StrictModes refuses on the way to authorized_keys.
UsePAM no
StrictModes no
# Tests open many connections at once (one ssh per Docker API connection).
MaxStartups 100:30:200
X11Forwarding no
PrintMotd no
# The remote \`docker system dial-stdio\` must reach the engine the tests use.
SetEnv DOCKER_HOST=$DOCKER_HOST_CHOSEN
EOF
}

ssh_client_block() {
	cat <<EOF
Host $SSH_ALIAS
    HostName 127.0.0.1
    Port $SSH_PORT
    User root
    IdentityFile $SSH_DIR/id_ed25519
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking accept-new
    UserKnownHostsFile $SSH_DIR/known_hosts
EOF
}

# Until 2026-11 `up` wrote the Host block into ~/.ssh/config between these markers; the block
# is taken out again (the rest of the file is left as it is).
SSH_MARK_BEGIN="# >>> postgraas testenv (written by .ci/testenv.sh up; edits between the markers are lost) >>>"
SSH_MARK_END="# <<< postgraas testenv <<<"

remove_old_ssh_block() {
	local home cfg tmp
	home=$(getent passwd "$(id -u)" | cut -d: -f6)
	cfg=$home/.ssh/config
	[ -n "$home" ] && [ -f "$cfg" ] && grep -qxF "$SSH_MARK_BEGIN" "$cfg" || return 0
	tmp=$cfg.tmp.$$
	awk -v begin="$SSH_MARK_BEGIN" -v end="$SSH_MARK_END" '
		$0 == begin { skip = 1; next }
		skip { if ($0 == end) { skip = 0; drop_blank = 1 } next }
		drop_blank && $0 == "" { drop_blank = 0; next }
		{ drop_blank = 0; print }
	' "$cfg" >"$tmp"
	chmod --reference="$cfg" "$tmp"
	mv "$tmp" "$cfg"
	log "removed the Host $SSH_ALIAS block an earlier version wrote into $cfg"
}

ensure_ssh_client_config() {
	(umask 077 && ssh_client_block >"$SSH_CLIENT_CONFIG.tmp" && mv "$SSH_CLIENT_CONFIG.tmp" "$SSH_CLIENT_CONFIG")
	mkdir -p "$SSH_WRAPPER_DIR"
	printf '%s\n' '#!/bin/sh' \
		'# Written by .ci/testenv.sh: ssh with the test environment'"'"'s client config only.' \
		"exec $(PATH=/usr/local/bin:/usr/bin:/bin command -v ssh) -F $(shquote "$SSH_CLIENT_CONFIG") \"\$@\"" >"$SSH_WRAPPER_DIR/ssh.tmp"
	chmod 755 "$SSH_WRAPPER_DIR/ssh.tmp"
	mv "$SSH_WRAPPER_DIR/ssh.tmp" "$SSH_WRAPPER_DIR/ssh"
	remove_old_ssh_block
}

sshd_running() {
	local pid
	[ -s "$SSHD_PID" ] && pid=$(cat "$SSHD_PID") && kill -0 "$pid" 2>/dev/null &&
		[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ]
}

stop_sshd() {
	local pid
	if sshd_running; then
		pid=$(cat "$SSHD_PID")
		log "stopping the test sshd (pid $pid)"
		# The listener only: sessions in progress end on their own.
		kill -TERM "$pid"
		for _ in $(seq 1 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		rm -f "$SSHD_PID"
	else
		log "no test sshd is running"
	fi
}

ensure_sshd() {
	ensure_ssh_binaries
	mkdir -p "$SSH_DIR"
	chmod 700 "$SSH_DIR"
	if [ ! -s "$SSH_DIR/ssh_host_ed25519_key" ]; then
		rm -f "$SSH_DIR/ssh_host_ed25519_key" "$SSH_DIR/ssh_host_ed25519_key.pub" "$SSH_DIR/known_hosts"
		ssh-keygen -q -t ed25519 -N '' -C postgraas-testenv-host -f "$SSH_DIR/ssh_host_ed25519_key" </dev/null >&2 ||
			die "ssh-keygen (host key) failed"
	fi
	if [ ! -s "$SSH_DIR/id_ed25519" ]; then
		rm -f "$SSH_DIR/id_ed25519" "$SSH_DIR/id_ed25519.pub"
		ssh-keygen -q -t ed25519 -N '' -C postgraas-testenv-client -f "$SSH_DIR/id_ed25519" </dev/null >&2 ||
			die "ssh-keygen (client key) failed"
	fi
	cmp -s "$SSH_DIR/id_ed25519.pub" "$SSH_DIR/authorized_keys" ||
		install -m 600 "$SSH_DIR/id_ed25519.pub" "$SSH_DIR/authorized_keys"

	local conf=$SSH_DIR/sshd_config changed=0 out
	if [ "$(cat "$conf" 2>/dev/null)" != "$(sshd_conf_content)" ]; then
		(umask 077 && sshd_conf_content >"$conf")
		changed=1
	fi
	# The privilege separation directory; /run is a tmpfs that loses it on reboot.
	mkdir -p /run/sshd
	chmod 755 /run/sshd
	out=$(/usr/sbin/sshd -t -f "$conf" 2>&1) || { printf '%s\n' "$out" >&2; die "the test sshd configuration $conf is invalid"; }

	if [ "$changed" = 1 ] && sshd_running; then
		log "test sshd configuration changed: restarting it"
		stop_sshd
	fi
	if sshd_running; then
		log "test sshd already running (pid $(cat "$SSHD_PID"), 127.0.0.1:$SSH_PORT)"
	else
		local t; t=$(now)
		log "starting the test sshd on 127.0.0.1:$SSH_PORT (log: $SSHD_LOG)"
		rm -f "$SSHD_PID"
		# sshd detaches itself; it must keep neither our stdout (a pipe) nor the lock fd.
		/usr/sbin/sshd -f "$conf" -E "$SSHD_LOG" </dev/null >/dev/null 2>>"$SSHD_LOG" 9>&- ||
			{ tail -n 20 "$SSHD_LOG" >&2; die "the test sshd did not start (log: $SSHD_LOG)"; }
		for _ in $(seq 1 50); do # 50 x 0.1 s
			sshd_running && break
			sleep 0.1
		done
		sshd_running || { tail -n 20 "$SSHD_LOG" >&2; die "the test sshd is not running (port $SSH_PORT taken? log: $SSHD_LOG)"; }
		log "test sshd started in $(since "$t") s"
	fi
	ensure_ssh_client_config

	# End to end, the way the provider goes: the engine answers through the alias.
	local t; t=$(now)
	if ! out=$(timeout 60 "$SSH_WRAPPER_DIR/ssh" -o ConnectTimeout=10 -T -- "$SSH_ALIAS" docker version --format '{{.Server.Version}}' \
		</dev/null 2>"$SSH_DIR/check.err"); then
		cat "$SSH_DIR/check.err" >&2
		tail -n 20 "$SSHD_LOG" >&2 || true
		die "no Docker engine answers through ssh $SSH_ALIAS (log: $SSHD_LOG)"
	fi
	log "Docker engine $out answers through ssh://$SSH_ALIAS ($(since "$t") s)"
}

# ---------------------------------------------------------------- test image

# Mirror of the main Debian archive, from the machine's apt sources: deb822 stanzas
# (/etc/apt/sources.list.d/*.sources, "URIs:" lines, Debian 12's default) or one-line entries
# (/etc/apt/sources.list, *.list: "deb [opts] URI suite components"). Prefers an entry for
# bookworm itself; else any main-archive entry (a suite without "-", e.g. trixie), never the
# security archive. APT_SOURCES_GLOB overrides the files read (for testing this function).
debian_mirror() {
	local f files=()
	# shellcheck disable=SC2206
	for f in ${APT_SOURCES_GLOB:-/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources}; do
		[ -r "$f" ] && [ -f "$f" ] && files+=("$f")
	done
	[ "${#files[@]}" -gt 0 ] || return 0
	awk '
		function consider(uri, suites,    n, i, sfx) {
			if (uri == "" || uri ~ /security/) return
			n = split(suites, sfx, /[ \t]+/)
			for (i = 1; i <= n; i++) {
				if (sfx[i] == "bookworm" && strict == "") strict = uri
				if (sfx[i] != "" && sfx[i] !~ /-/ && relaxed == "") relaxed = uri
			}
		}
		function flush(    u) {
			if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no") { split(uris, u, /[ \t]+/); consider(u[1], suites) }
			types = ""; suites = ""; uris = ""; enabled = ""
		}
		FNR == 1 { flush(); deb822 = (FILENAME ~ /\.sources$/) }
		/^[ \t]*#/ { next }
		deb822 && /^[ \t]*$/ { flush(); next }
		deb822 {
			key = tolower($1); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
			if (key == "types:") types = val
			else if (key == "suites:") suites = val
			else if (key == "uris:") uris = val
			else if (key == "enabled:") enabled = val
			next
		}
		$1 == "deb" {
			i = 2
			if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
			consider($i, $(i + 1))
		}
		END { flush(); if (strict != "") print strict; else if (relaxed != "") print relaxed }
	' "${files[@]}" 2>/dev/null
}

# debootstrap_progress turns debootstrap's output (one "I: Verb thing" line per step and
# package) into one line per phase, with how many packages the phase went through.
debootstrap_progress() {
	local line verb cur="" n=0
	while IFS= read -r line; do
		[[ $line == "I: "* ]] || continue
		verb=${line#I: }
		verb=${verb%% *}
		if [ "$verb" != "$cur" ]; then
			[ "$n" -le 1 ] || log "debootstrap:   ... $cur: $n"
			cur=$verb
			n=0
			log "debootstrap: ${line#I: }"
		fi
		n=$((n + 1))
	done
	[ "$n" -le 1 ] || log "debootstrap:   ... $cur: $n"
}

build_standin() {
	command -v debootstrap >/dev/null || apt_install debootstrap
	local mirror rootfs t
	mirror=$(debian_mirror || true)
	[ -n "$mirror" ] || die "no Debian archive found in the apt sources (needed to debootstrap the stand-in image); set POSTGRAAS_TEST_IMAGE"
	# debootstrap does not read apt's proxy settings: pass them on if there are any.
	if [ -z "${http_proxy:-}" ]; then
		local proxy=""
		eval "$(apt-config shell proxy Acquire::http::Proxy)"
		[ -n "$proxy" ] && export http_proxy=$proxy
	fi
	rootfs=$STATE/standin-rootfs
	rm -rf "$rootfs"
	t=$(now)
	log "debootstrap bookworm with postgresql-15 (mirror from the apt sources) into $rootfs"
	log "(a minute or two, once per machine; the phases follow, the full log is $STATE/debootstrap.log)"
	debootstrap --variant=minbase --include=postgresql-15 bookworm "$rootfs" "$mirror" 2>&1 |
		tee "$STATE/debootstrap.log" | debootstrap_progress ||
		{ tail -n 30 "$STATE/debootstrap.log" >&2; die "debootstrap failed (log: $STATE/debootstrap.log)"; }
	log "debootstrap took $(since "$t") s"

	install -m 0755 "$HERE/standin/docker-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
	# The package's "main" cluster, caches and docs are dead weight in the image.
	rm -rf "$rootfs/var/lib/postgresql/15" "$rootfs/etc/postgresql/15/main" \
		"$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
		"$rootfs/usr/share/doc" "$rootfs/usr/share/man" "$rootfs/usr/share/info"
	mkdir -p "$rootfs/var/lib/postgresql/data" "$rootfs/var/run/postgresql" "$rootfs/docker-entrypoint-initdb.d"
	chroot "$rootfs" chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql
	chmod 700 "$rootfs/var/lib/postgresql/data"

	t=$(now)
	log "docker import $STANDIN_ROOTFS_IMAGE"
	tar -C "$rootfs" -c . | docker import \
		-c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
		-c 'CMD ["postgres"]' \
		-c 'EXPOSE 5432' \
		-c 'VOLUME /var/lib/postgresql/data' \
		-c 'ENV PGDATA=/var/lib/postgresql/data' \
		-c 'ENV LANG=C.UTF-8' \
		-c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		- "$STANDIN_ROOTFS_IMAGE" >&2 || die "docker import failed"
	log "docker import took $(since "$t") s"
	rm -rf "$rootfs"
}

# The label that says which entrypoint (and so which template) the stand-in's top layer was built from.
entrypoint_sha() { sha256sum "$HERE/standin/docker-entrypoint.sh" | cut -c1-64; }

# The final stand-in image is a thin layer on top of the imported rootfs: the current
# entrypoint, an initialised data directory it copies instead of running initdb (made by the
# entrypoint's standin-template mode; a change to it rebuilds only this layer, in seconds, no
# debootstrap) and STOPSIGNAL SIGINT, which `docker import` of engine 20.10
# rejects (the official image stops postgres with SIGINT, a fast shutdown, rather than
# SIGTERM, a smart shutdown that waits for clients). A local base: no registry needed.
build_standin_layer() {
	local ctx t sha old
	sha=$(entrypoint_sha)
	old=$(docker image inspect --format '{{.Id}}' "$STANDIN_IMAGE" 2>/dev/null || true)
	ctx=$(mktemp -d)
	install -m 0755 "$HERE/standin/docker-entrypoint.sh" "$ctx/docker-entrypoint.sh"
	printf '%s\n' "FROM $STANDIN_ROOTFS_IMAGE" \
		"COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh" \
		"RUN [\"/usr/local/bin/docker-entrypoint.sh\", \"standin-template\"]" \
		"LABEL $STANDIN_LABEL=$sha" \
		"STOPSIGNAL SIGINT" >"$ctx/Dockerfile"
	t=$(now)
	if DOCKER_BUILDKIT=0 docker build -q -t "$STANDIN_IMAGE" "$ctx" >"$STATE/build.log" 2>&1; then
		log "docker build of the entrypoint layer took $(since "$t") s"
	else
		log "docker build failed ($(tail -n 1 "$STATE/build.log")); using the imported image without STOPSIGNAL"
		docker tag "$STANDIN_ROOTFS_IMAGE" "$STANDIN_IMAGE"
	fi
	rm -rf "$ctx"
	# Drop the previous top layer if nothing uses it any more (fails harmlessly otherwise).
	if [ -n "$old" ] && [ "$old" != "$(docker image inspect --format '{{.Id}}' "$STANDIN_IMAGE")" ]; then
		docker rmi "$old" >/dev/null 2>&1 || true
	fi
}

# Sets TEST_IMAGE.
ensure_image() {
	if [ -n "${POSTGRAAS_TEST_IMAGE:-}" ]; then
		TEST_IMAGE=$POSTGRAAS_TEST_IMAGE
		if ! docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
			log "pulling POSTGRAAS_TEST_IMAGE=$TEST_IMAGE"
			timeout 300 docker pull "$TEST_IMAGE" >&2 || die "POSTGRAAS_TEST_IMAGE=$TEST_IMAGE is not available"
		fi
		log "test image: $TEST_IMAGE (from POSTGRAAS_TEST_IMAGE)"
		return
	fi
	if docker image inspect "$OFFICIAL_IMAGE" >/dev/null 2>&1; then
		TEST_IMAGE=$OFFICIAL_IMAGE
		log "test image: $TEST_IMAGE (present locally)"
		return
	fi
	if [ ! -e "$STATE/pull-failed" ]; then
		local t; t=$(now)
		if timeout 30 docker pull "$OFFICIAL_IMAGE" >&2 2>"$STATE/pull.log"; then
			TEST_IMAGE=$OFFICIAL_IMAGE
			log "test image: $TEST_IMAGE (pulled in $(since "$t") s)"
			return
		fi
		log "docker pull $OFFICIAL_IMAGE failed after $(since "$t") s: $(tail -n 1 "$STATE/pull.log")"
		touch "$STATE/pull-failed" # do not retry on every `up`; delete the file to retry
	fi
	TEST_IMAGE=$STANDIN_IMAGE
	local have
	have=$(docker image inspect --format "{{index .Config.Labels \"$STANDIN_LABEL\"}}" "$STANDIN_IMAGE" 2>/dev/null || true)
	if [ "$have" = "$(entrypoint_sha)" ]; then
		log "test image: $TEST_IMAGE (stand-in, already built)"
		return
	fi
	if ! docker image inspect "$STANDIN_ROOTFS_IMAGE" >/dev/null 2>&1; then
		build_standin
	else
		log "stand-in entrypoint changed or image missing: rebuilding its top layer"
	fi
	build_standin_layer
	log "test image: $TEST_IMAGE (stand-in, built now)"
	verify_image "$TEST_IMAGE" quick
}

# verify_image IMAGE [quick]
verify_image() {
	local image=$1 mode=${2:-full} cid port t ok=0
	t=$(now)
	cid=$(docker run -d -e POSTGRES_USER=u -e POSTGRES_PASSWORD=p -e POSTGRES_DB=d -p 127.0.0.1::5432 "$image")
	port=$(docker port "$cid" 5432/tcp | sed -n 1p)
	port=${port##*:}
	for _ in $(seq 1 300); do
		if PGPASSWORD=p psql -X -At "host=127.0.0.1 port=$port user=u dbname=d sslmode=disable connect_timeout=2" \
			-c 'SELECT 1' >/dev/null 2>&1; then
			ok=1
			break
		fi
		sleep 0.1
	done
	if [ "$ok" = 1 ]; then
		log "verify $image: password login over 127.0.0.1:$port $(since "$t") s after docker run"
	else
		docker logs "$cid" >&2 || true
	fi
	docker rm -f -v "$cid" >/dev/null
	[ "$ok" = 1 ] || die "verify $image: no password login within 30 s"
	[ "$mode" = quick ] && return 0

	t=$(now)
	if docker run -d --rm "${image%:*}:does-not-exist" >/dev/null 2>&1; then
		die "verify: a bad tag started a container"
	fi
	log "verify: a bad tag failed in $(since "$t") s"

	t=$(now)
	cid=$(docker run -d "$image")
	local code
	code=$(timeout 30 docker wait "$cid")
	local logs; logs=$(docker logs "$cid" 2>&1 || true)
	if [ "$code" != 0 ] && [[ $logs == *"superuser password is not specified"* ]]; then
		log "verify: missing POSTGRES_PASSWORD -> exit $code in $(since "$t") s, log: ${logs%%$'\n'*}"
	else
		docker logs "$cid" >&2 || true
		docker rm -f -v "$cid" >/dev/null
		die "verify: a container without POSTGRES_PASSWORD did not fail as expected (exit $code)"
	fi
	docker rm -f -v "$cid" >/dev/null
}

# ---------------------------------------------------------------- env file

# write_env FILE: the settings of the parts this `up` started (PARTS).
write_env() {
	local file=$1 tmp=$1.tmp.$$
	{
		echo "# Written by .ci/testenv.sh up ${PARTS[*]} at $(date -u '+%Y-%m-%dT%H:%M:%SZ'). Source it: . $file"
		kv() { printf 'export %s=%s\n' "$1" "$(shquote "$2")"; }
		if has_part pg; then
			kv POSTGRAAS_METADB_HOST 127.0.0.1
			kv POSTGRAAS_METADB_PORT "$PG_PORT"
			kv POSTGRAAS_METADB_DB_NAME postgraas
			kv POSTGRAAS_METADB_USERNAME postgraas
			kv POSTGRAAS_METADB_PASSWORD "$PW_META"
			kv POSTGRAAS_METADB_SSLMODE disable
			kv POSTGRAAS_PG_CLUSTER_HOST 127.0.0.1
			kv POSTGRAAS_PG_CLUSTER_PORT "$PG_PORT"
			kv POSTGRAAS_PG_CLUSTER_DATABASE postgres
			kv POSTGRAAS_PG_CLUSTER_USERNAME postgres
			kv POSTGRAAS_PG_CLUSTER_PASSWORD "$PW_POSTGRES"
			kv POSTGRAAS_PG_CLUSTER_SSLMODE disable
			kv POSTGRAAS_TEST_LIMITED_ADMIN_USERNAME postgraas_admin
			kv POSTGRAAS_TEST_LIMITED_ADMIN_PASSWORD "$PW_ADMIN"
			kv POSTGRAAS_TEST_PG_LOG "$PG_LOG"
			kv POSTGRAAS_TEST_PG_SOCKET_DIR "$PG_SOCK"
		fi
		if has_part docker; then
			kv DOCKER_HOST "$DOCKER_HOST_CHOSEN"
			kv POSTGRAAS_TEST_IMAGE "$TEST_IMAGE"
		fi
		if has_part ssh; then
			kv POSTGRAAS_TEST_SSH_DOCKER_HOST "ssh://$SSH_ALIAS"
			# Tests put this first on PATH: its `ssh` reads only the test client config.
			kv POSTGRAAS_TEST_SSH_PATH "$SSH_WRAPPER_DIR"
		fi
		if has_part kubernetes; then
			kv POSTGRAAS_TEST_KUBECONFIG "$KUBECONFIG_ADMIN"
			kv POSTGRAAS_TEST_KUBE_STORAGE_CLASS "$KUBE_STORAGE_CLASS"
			kv POSTGRAAS_TEST_KUBE_IMAGE "$KUBE_IMAGE"
			kv POSTGRAAS_TEST_KUBE_NODE_IP "$KUBE_NODE_IP"
			# kubectl of the cluster's version; not put on PATH (the bench runs it from here).
			kv POSTGRAAS_TEST_KUBECTL "$KUBE_BIN/kubectl"
		fi
		kv CHECKPOINT_DISABLE 1
		if has_part terraform; then
			# The terraform ensure_terraform chose, first on PATH for the tests, the demo and the bench.
			printf 'export PATH=%s:"$PATH"\n' "$(shquote "$(dirname "$TERRAFORM_BIN")")"
			kv POSTGRAAS_TEST_TERRAFORM_VERSION "$(cli_version "$TERRAFORM_BIN")"
		fi
		# The CLIs of the matrix, their versions, and the host each puts in front of a provider
		# source that has none (terraform-plugin-testing's TF_ACC_PROVIDER_HOST), once built
		# (up --matrix).
		if [ -n "${TOFU_BIN:-}" ]; then
			kv POSTGRAAS_TEST_TOFU "$TOFU_BIN"
			kv POSTGRAAS_TEST_TOFU_VERSION "$TOFU_VERSION"
			kv POSTGRAAS_TEST_TOFU_PROVIDER_HOST "$TOFU_PROVIDER_HOST"
		fi
		if [ -n "${TERRAFORM_NEWEST_BIN:-}" ]; then
			kv POSTGRAAS_TEST_TERRAFORM_NEWEST "$TERRAFORM_NEWEST_BIN"
			kv POSTGRAAS_TEST_TERRAFORM_NEWEST_VERSION "$TERRAFORM_NEWEST_VERSION"
			kv POSTGRAAS_TEST_TERRAFORM_NEWEST_PROVIDER_HOST "$TERRAFORM_NEWEST_PROVIDER_HOST"
		fi
	} >"$tmp"
	chmod 600 "$tmp"
	mv "$tmp" "$file"
}

# ---------------------------------------------------------------- terraform and OpenTofu

# The acceptance tests, make demo, make bench and make docs run the terraform CLI; the tests
# need 1.11 or later (ephemeral resources came in 1.10, write-only attributes in 1.11). The
# machines here carry v1.11.4 on PATH. Where one lacks it (or has an older one), v1.11.4 is
# built from the Go module proxy, once, into the state dir (no registry or release server is
# asked). `make test` also runs a subset of the acceptance tests under the CLIs of the matrix,
# built the same way (`up --matrix`): OpenTofu (1.11 or later has write-only attributes) and
# the newest Terraform the proxy serves.
TERRAFORM_FALLBACK_VERSION=1.11.4
TERRAFORM_MIN_VERSION=1.11.0
TERRAFORM_FALLBACK_DIR=$STATE/terraform-$TERRAFORM_FALLBACK_VERSION
TERRAFORM_MODULE=github.com/hashicorp/terraform
TERRAFORM_NEWEST_VERSION=1.13.3
TOFU_MODULE=github.com/opentofu/opentofu
TOFU_VERSION=1.12.6

# POSTGRAAS_TERRAFORM_SEARCH_PATH, when set, replaces the PATH searched for an existing
# terraform (the caller's PATH, GOBIN and /usr/local/bin): tests of the build set it to a
# directory without one.
terraform_search_path() {
	if [ -n "${POSTGRAAS_TERRAFORM_SEARCH_PATH+set}" ]; then
		printf '%s' "$POSTGRAAS_TERRAFORM_SEARCH_PATH"
		return
	fi
	local gobin
	gobin=$(go env GOBIN)
	[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
	printf '%s' "$CALLER_PATH:$gobin:/usr/local/bin"
}

# cli_version BIN: the version BIN reports ("Terraform v1.11.4", "OpenTofu v1.12.6": 1.11.4,
# 1.12.6), empty when it does not run. Not always on the first line: OpenTofu prints warnings
# about its CLI configuration (say TF_CLI_CONFIG_FILE names a missing file) to stdout first.
cli_version() {
	[ -x "$1" ] || return 0
	CHECKPOINT_DISABLE=1 "$1" version 2>/dev/null | sed -n 's/^[A-Za-z][A-Za-z]* v\([0-9][0-9.]*\).*/\1/p' | sed -n 1p
}

# terraform_recent BIN: BIN is a terraform CLI of version TERRAFORM_MIN_VERSION or later.
terraform_recent() {
	local v
	v=$(cli_version "$1")
	[ -n "$v" ] && [ "$(printf '%s\n%s\n' "$TERRAFORM_MIN_VERSION" "$v" | sort -V | sed -n 1p)" = "$TERRAFORM_MIN_VERSION" ]
}

ensure_terraform() {
	local found
	TERRAFORM_BIN=
	if found=$(PATH=$(terraform_search_path) command -v terraform); then
		if terraform_recent "$found"; then
			TERRAFORM_BIN=$found
		else
			log "$found is older than $TERRAFORM_MIN_VERSION: not used"
		fi
	fi
	if [ -z "$TERRAFORM_BIN" ]; then
		TERRAFORM_BIN=$TERRAFORM_FALLBACK_DIR/terraform
		if ! terraform_recent "$TERRAFORM_BIN"; then
			log "no terraform $TERRAFORM_MIN_VERSION or later found"
			ensure_cli_built terraform "$TERRAFORM_MODULE" "$TERRAFORM_FALLBACK_VERSION" . "$TERRAFORM_FALLBACK_DIR" \
				"put a terraform CLI ($TERRAFORM_MIN_VERSION or later) on PATH"
		fi
	fi
	log "terraform v$(cli_version "$TERRAFORM_BIN") at $TERRAFORM_BIN"
}

# The CLIs of the matrix are always these pinned versions, whatever is on PATH.
TOFU_DIR=$STATE/tofu-$TOFU_VERSION
TERRAFORM_NEWEST_DIR=$STATE/terraform-$TERRAFORM_NEWEST_VERSION

# ensure_matrix [build]: sets TOFU_BIN and TERRAFORM_NEWEST_BIN to those CLIs; with "build"
# builds each that is not in the state dir yet, without it leaves the variable empty then.
ensure_matrix() {
	TOFU_BIN=$TOFU_DIR/tofu
	TERRAFORM_NEWEST_BIN=$TERRAFORM_NEWEST_DIR/terraform
	if [ "${1:-}" = build ]; then
		ensure_cli_built tofu "$TOFU_MODULE" "$TOFU_VERSION" ./cmd/tofu "$TOFU_DIR"
		ensure_cli_built terraform "$TERRAFORM_MODULE" "$TERRAFORM_NEWEST_VERSION" . "$TERRAFORM_NEWEST_DIR"
	fi
	TOFU_PROVIDER_HOST= TERRAFORM_NEWEST_PROVIDER_HOST=
	if [ "$(cli_version "$TOFU_BIN")" = "$TOFU_VERSION" ]; then
		TOFU_PROVIDER_HOST=$(cli_provider_host "$TOFU_BIN")
	else
		TOFU_BIN=
	fi
	if [ "$(cli_version "$TERRAFORM_NEWEST_BIN")" = "$TERRAFORM_NEWEST_VERSION" ]; then
		TERRAFORM_NEWEST_PROVIDER_HOST=$(cli_provider_host "$TERRAFORM_NEWEST_BIN")
	else
		TERRAFORM_NEWEST_BIN=
	fi
	if [ -n "$TOFU_BIN$TERRAFORM_NEWEST_BIN" ]; then
		log "matrix:${TOFU_BIN:+ OpenTofu v$TOFU_VERSION at $TOFU_BIN}${TERRAFORM_NEWEST_BIN:+ Terraform v$TERRAFORM_NEWEST_VERSION at $TERRAFORM_NEWEST_BIN}"
	fi
}

# cli_provider_host BIN: the host BIN puts in front of a provider source without one, as BIN
# itself says (`providers` of a configuration requiring postgraas/postgraas: no network, no
# init), so that no registry's host name is written here.
cli_provider_host() {
	local d host
	d=$(mktemp -d)
	printf 'terraform {\n  required_providers {\n    postgraas = { source = "postgraas/postgraas" }\n  }\n}\n' >"$d/main.tf"
	host=$(cd "$d" && CHECKPOINT_DISABLE=1 "$1" providers -no-color 2>/dev/null |
		sed -n 's#.*provider\[\([^]/]*\)/postgraas/postgraas\].*#\1#p' | sed -n 1p)
	rm -rf "$d"
	[ -n "$host" ] || die "could not read the default provider host from '$1 providers'"
	printf '%s' "$host"
}

# ensure_cli_built NAME MODULE VERSION MAIN DIR [HINT]: DIR/NAME is MODULE's MAIN package at
# VERSION, built by build_go_cli unless DIR already holds it. One build per DIR at a time: a
# second caller waits for the first and then finds the binary (an hour at most; the build
# holds no other lock, so `up`s that need nothing built go on meanwhile).
ensure_cli_built() {
	local name=$1 v=$3 dir=$5
	mkdir -p "$dir"
	exec 8>"$dir/build.lock"
	if ! flock -n 8; then
		log "another run is building $name v$v into $dir: waiting for it"
		flock -w 3600 8 || die "timed out waiting for the lock $dir/build.lock"
	fi
	if [ "$(cli_version "$dir/$name")" != "$v" ]; then
		build_go_cli "$@"
	fi
	exec 8>&-
}

# go_build_logged WHAT START LOG DIR ARGS...: `go build -v -trimpath ARGS` in the module copy DIR
# (module mode, no cgo), its output in LOG and a progress line every minute (START: when the
# whole build began); on failure the log's last lines go to stderr and it returns non-zero. The
# compiler must not inherit fd 9 (a caller's lock).
go_build_logged() {
	local what=$1 t=$2 logf=$3 dir=$4 pid n=0 rc=0
	shift 4
	(cd "$dir" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 exec go build -v -trimpath "$@") >"$logf" 2>&1 9>&- &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		n=$((n + 1))
		[ $((n % 60)) != 0 ] || log "still compiling $what after $(since "$t") s: $(grep -c '' "$logf") packages so far"
	done
	wait "$pid" || rc=$?
	[ "$rc" = 0 ] || tail -n 30 "$logf" >&2
	return "$rc"
}

# build_go_cli NAME MODULE VERSION MAIN DIR [HINT] builds the Go command MAIN (a package path
# relative to the module's root) of MODULE at VERSION into DIR/NAME, from the Go module
# proxy. `go install` cannot build terraform: its go.mod has replace directives to nested
# modules (the remote-state backends: azurerm, consul, cos, gcs, kubernetes, oss, pg, s3, oci)
# that the module zip leaves out, and up to 1.11 a godebug setting (tlskyber) that Go 1.26 no
# longer knows. So the module is copied out of the read-only module cache and built from the
# copy, with those backends and that setting taken out of the copy only (the tests keep their
# state locally). OpenTofu's go.mod has no such replace; it is built the same way. The
# version is stamped as the projects' release builds do (terraform's scripts/build.sh,
# OpenTofu's .goreleaser.yaml: version.dev=no), or it would say v1.11.4-dev.
build_go_cli() {
	local name=$1 mod=$2 v=$3 main=$4 out=$5 hint=${6:-} t src work missing m alias init
	t=$(now)
	log "building $name v$v ($mod) from the Go module proxy into $out: this takes minutes, once"
	mkdir -p "$out"
	# Outside any module, so nothing's go.mod is touched.
	src=$(cd "$out" && GOWORK=off GOFLAGS= go mod download -json "$mod@v$v" |
		awk -F'"' '$2 == "Dir" { print $4 }') || true
	[ -n "$src" ] && [ -f "$src/go.mod" ] ||
		die "could not download $mod@v$v from the Go module proxy${hint:+: $hint}"
	work=$out/src
	rm -rf "$work"
	# The module cache is read-only: copy, then make the copy writable.
	cp -r "$src" "$work"
	chmod -R u+w "$work"

	# Nested modules the zip leaves out: drop their replace and require lines, and the
	# backends that import them.
	missing=$(sed -n "s#^replace \($mod/[^ ]*\) => \./\(.*\)\$#\1 \2#p" "$work/go.mod" |
		while read -r m dir; do [ -e "$work/$dir" ] || echo "$m"; done)
	init=$work/internal/backend/init/init.go
	for m in $missing; do
		sed -i -e "\#^replace $m =>#d" -e "\#^[[:space:]]*$m v#d" "$work/go.mod"
		[ -f "$init" ] || continue
		alias=$(sed -n "s#^[[:space:]]*\([A-Za-z0-9_]*\) \"$m\"\$#\1#p" "$init")
		if [ -n "$alias" ]; then
			sed -i -e "\#\"$m\"\$#d" -e "/return $alias\.New()/d" "$init"
		fi
	done
	[ -z "$missing" ] || log "left out of the build (not in the module zip): $(echo $missing | sed "s#$mod/##g")"
	# godebug settings this Go does not know fail the build ("unknown godebug"): drop them.
	sed -i '/^godebug tlskyber=/d' "$work/go.mod"

	log "compiling $name v$v (log: $out/build.log)"
	go_build_logged "$name v$v" "$t" "$out/build.log" "$work" -ldflags "-s -w -X '$mod/version.dev=no'" \
		-o "$out/$name.tmp" "$main" || die "building $name v$v failed (log: $out/build.log)${hint:+: $hint}"
	mv "$out/$name.tmp" "$out/$name"
	rm -rf "$work"
	[ "$(cli_version "$out/$name")" = "$v" ] ||
		die "$out/$name reports version '$("$out/$name" version 2>&1 | sed -n 1p)', want v$v"
	log "$name v$v built in $(since "$t") s"
}

# ---------------------------------------------------------------- kubernetes

# A real single-node Kubernetes (the kubernetes backend's acceptance tests), everything under
# the state dir: the binaries built once from the k8s.io/kubernetes Go module (no registry
# serves images or releases here), Debian's etcd and CNI plugins, a containerd of its own (the
# binary docker.io installs; the Docker engine's containerd is not touched), a node IP on a
# bridge of its own, kube-proxy in nftables mode (Docker's iptables stay as they are): what was
# found to work on these machines (Debian 12, 2 cores, cgroup v1, no systemd, no registry).
# Costs: the build once, ~6 min on 2 idle cores, 15 min measured on a busy machine (~3 GB of Go
# build cache, 463 MB of binaries, kept by `clean`); a start from empty state ~30 s (half of it
# the postgres image import, kept by `down`: ~8 s after it); `up` with the cluster running ~2 s;
# `down` 10-20 s (longer while workloads are being deleted).
KUBE_VERSION=1.34.4
KUBE_BUILD_DIR=$STATE/kubernetes-v$KUBE_VERSION
KUBE_BIN=$KUBE_BUILD_DIR/bin
KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)

kube_built() {
	local c
	for c in "${KUBE_CMDS[@]}"; do [ -x "$KUBE_BIN/$c" ] || return 1; done
	[ "$(cat "$KUBE_BIN/version" 2>/dev/null)" = "v$KUBE_VERSION" ]
}

# ensure_kube_built: the binaries in KUBE_BIN, built by build_kube unless they are there. One
# build at a time (as ensure_cli_built): a second caller waits and then finds them.
ensure_kube_built() {
	mkdir -p "$KUBE_BUILD_DIR"
	exec 8>"$KUBE_BUILD_DIR/build.lock"
	if ! flock -n 8; then
		log "another run is building Kubernetes v$KUBE_VERSION into $KUBE_BUILD_DIR: waiting for it"
		flock -w 3600 8 || die "timed out waiting for the lock $KUBE_BUILD_DIR/build.lock"
	fi
	kube_built || build_kube
	exec 8>&-
}

# build_kube: the module from the Go module proxy, copied out of the read-only cache; in the
# copy the workspace and vendor dir go, and each staging module (replace k8s.io/X =>
# ./staging/...) is replaced by its published k8s.io/X v0.N.M, so that the build is an
# ordinary module build. Version stamped as Kubernetes' own build does (hack/lib/version.sh),
# or the components report v0.0.0 and kubelet/apiserver skew checks complain.
build_kube() {
	local mod=k8s.io/kubernetes v=v$KUBE_VERSION sv=v0.${KUBE_VERSION#*.} t src work m ldflags pkgs=()
	t=$(now)
	log "building Kubernetes $v (${KUBE_CMDS[*]}) from the Go module proxy into $KUBE_BIN"
	log "(about 6 minutes on 2 idle cores, 15 on a busy machine and 2 GB of memory, once per machine; kept by clean)"
	src=$(cd "$KUBE_BUILD_DIR" && GOWORK=off GOFLAGS='' go mod download -json "$mod@$v" |
		awk -F'"' '$2 == "Dir" { print $4 }') || true
	[ -n "$src" ] && [ -f "$src/go.mod" ] || die "could not download $mod@$v from the Go module proxy"
	log "module $mod@$v downloaded after $(since "$t") s"
	work=$KUBE_BUILD_DIR/src
	rm -rf "$work"
	cp -r "$src" "$work"
	chmod -R u+w "$work"
	rm -rf "$work/go.work" "$work/go.work.sum" "$work/vendor"
	sed -n 's#^[[:space:]]*\(replace[[:space:]]\)\{0,1\}\(k8s.io/[^ ]*\) => \./staging/.*#\2#p' "$work/go.mod" |
		while read -r m; do (cd "$work" && go mod edit -replace="$m=$m@$sv"); done
	grep -q '=> \./staging/' "$work/go.mod" && die "build_kube: staging replaces left in $work/go.mod"
	ldflags="-s -w"
	for m in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags="$ldflags -X $m.gitVersion=$v -X $m.gitMajor=${KUBE_VERSION%%.*}"
		ldflags="$ldflags -X $m.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2) -X $m.gitTreeState=clean"
		ldflags="$ldflags -X $m.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	done
	for m in "${KUBE_CMDS[@]}"; do pkgs+=("./cmd/$m"); done
	mkdir -p "$KUBE_BIN"
	log "compiling (log: $KUBE_BUILD_DIR/build.log)"
	go_build_logged "Kubernetes $v" "$t" "$KUBE_BUILD_DIR/build.log" "$work" -ldflags "$ldflags" \
		-o "$KUBE_BIN/" "${pkgs[@]}" || die "building Kubernetes $v failed (log: $KUBE_BUILD_DIR/build.log)"
	# Not "kubectl ... | grep -q": grep exits at its match, kubectl's next line then gets
	# SIGPIPE, and pipefail fails a build that was fine (seen on a fresh machine).
	grep -q "Client Version: $v\$" <<<"$("$KUBE_BIN/kubectl" version --client 2>/dev/null)" ||
		die "$KUBE_BIN/kubectl does not report $v"
	echo "$v" >"$KUBE_BIN/version"
	rm -rf "$work"
	log "Kubernetes $v built in $(since "$t") s ($(du -sh "$KUBE_BIN" | cut -f1) of binaries)"
}

# The running cluster: everything under KUBE_DIR (logs in KUBE_DIR/log), node IP on the bridge.
KUBE_DIR=$STATE/kubernetes
KUBE_LOG=$KUBE_DIR/log
KUBE_RUN=$KUBE_DIR/run      # pid files
KUBE_PKI=$KUBE_DIR/pki      # root only
KUBECONFIG_ADMIN=$KUBE_DIR/admin.kubeconfig
KUBE_NODE=postgraas-testenv
KUBE_BRIDGE=k8sbr0
KUBE_NODE_IP=10.244.0.1
KUBE_POD_CIDR=10.244.0.0/24
KUBE_SERVICE_CIDR=10.96.0.0/24
KUBE_SERVICE_IP=10.96.0.1   # the kubernetes Service, first of the range
KUBE_APISERVER_PORT=6443
KUBE_ETCD_PORT=12379        # not etcd's default 2379/2380: leave those to anything else
KUBE_ETCD_PEER_PORT=12380
KUBE_STORAGE_CLASS=postgraas-hostpath
KUBE_CGROUP_ROOT=/postgraas-testenv-kube
KUBE_CTRD=$KUBE_DIR/containerd
KUBE_CTRD_SOCK=$KUBE_CTRD/containerd.sock
KUBE_PAUSE_IMAGE=localhost/postgraas-pause:1
KUBE_CNI_BIN=/usr/lib/cni
# The in-tree hostpath provisioner's fixed directory (not configurable).
KUBE_HOSTPATH_DIR=/tmp/hostpath_pv
# What kubelet sets (vm.*, kernel.*: container manager) and kube-proxy might (conntrack): saved
# at the first start into KUBE_SYSCTLS, restored by `down`.
KUBE_SYSCTL_KEYS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
	net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
	net.netfilter.nf_conntrack_tcp_timeout_close_wait net.ipv4.conf.all.route_localnet)
KUBE_SYSCTLS=$KUBE_DIR/sysctls.saved
# kubelet's device plugin socket dir, its container log links, containerd's CNI result cache.
KUBE_FIXED_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni)
KUBE_HOST_PATHS=$KUBE_DIR/host-paths.ours

kctl() { "$KUBE_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
kctr() { ctr --address "$KUBE_CTRD_SOCK" --namespace k8s.io "$@"; }

# kube_pid NAME: the pid of our NAME if it runs (pid file and the binary it runs agree).
kube_pid() {
	local pid bin=$2
	[ -s "$KUBE_RUN/$1.pid" ] && pid=$(cat "$KUBE_RUN/$1.pid") && [ -n "$pid" ] &&
		[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$bin")" ] && printf '%s' "$pid"
}

# kube_start NAME BIN ARGS...: start BIN detached, unless it runs; log in KUBE_LOG/NAME.log.
kube_start() {
	local name=$1 bin=$2 pid
	shift 2
	if pid=$(kube_pid "$name" "$bin"); then
		return 0
	fi
	log "starting $name (log: $KUBE_LOG/$name.log)"
	# Detached, without our stdout (a pipe) or the lock fds.
	setsid nohup "$bin" "$@" </dev/null >>"$KUBE_LOG/$name.log" 2>&1 8>&- 9>&- &
	echo $! >"$KUBE_RUN/$name.pid"
	KUBE_STARTED=1
}

# kube_stop NAME BIN [NAME BIN]...: TERM to all at once, up to 20 s, then KILL.
kube_stop() {
	local pid pids=() names=()
	while [ $# -ge 2 ]; do
		if pid=$(kube_pid "$1" "$2"); then
			log "stopping $1 (pid $pid)"
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
			names+=("$1")
		fi
		rm -f "$KUBE_RUN/$1.pid"
		shift 2
	done
	for pid in "${pids[@]}"; do
		for _ in $(seq 1 200); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "pid $pid (one of ${names[*]}) still running after 20 s: killing it"
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.5
		fi
	done
}

# wait_for SECONDS WHAT NAME CMD...: CMD succeeds within SECONDS, or die with NAME's log.
wait_for() {
	local secs=$1 what=$2 name=$3
	shift 3
	for _ in $(seq 1 $((secs * 5))); do
		"$@" >/dev/null 2>&1 && return 0
		if [ -n "$name" ] && [ -s "$KUBE_RUN/$name.pid" ] && ! kill -0 "$(cat "$KUBE_RUN/$name.pid")" 2>/dev/null; then
			tail -n 30 "$KUBE_LOG/$name.log" >&2 || true
			die "$name exited while waiting for $what (log: $KUBE_LOG/$name.log)"
		fi
		sleep 0.2
	done
	[ -z "$name" ] || tail -n 30 "$KUBE_LOG/$name.log" >&2 || true
	die "no $what within $secs s${name:+ (log: $KUBE_LOG/$name.log)}"
}

ensure_kube_packages() {
	local pkgs=()
	command -v etcd >/dev/null || pkgs+=(etcd-server)
	[ -x "$KUBE_CNI_BIN/bridge" ] && [ -x "$KUBE_CNI_BIN/host-local" ] && [ -x "$KUBE_CNI_BIN/loopback" ] ||
		pkgs+=(containernetworking-plugins)
	command -v nft >/dev/null || pkgs+=(nftables)   # kube-proxy's nftables mode runs nft
	command -v containerd >/dev/null && command -v ctr >/dev/null || pkgs+=(containerd)
	command -v openssl >/dev/null || pkgs+=(openssl)
	command -v curl >/dev/null || pkgs+=(curl)
	if [ "${#pkgs[@]}" != 0 ]; then
		# etcd-server's init script would start a system etcd (port 2379): keep the package from
		# starting it, unless the machine already has a policy (as ensure_ssh_binaries).
		local policy=/usr/sbin/policy-rc.d own_policy=0
		if [ ! -e "$policy" ] && [ "$(id -u)" = 0 ]; then
			printf '#!/bin/sh\n# Temporary, from .ci/testenv.sh (postgraas): start no service.\nexit 101\n' >"$policy"
			chmod 755 "$policy"
			own_policy=1
			trap 'rm -f /usr/sbin/policy-rc.d' EXIT
		fi
		apt_install "${pkgs[@]}"
		if [ "$own_policy" = 1 ]; then
			rm -f "$policy"
			trap - EXIT
		fi
	fi
	command -v etcd >/dev/null || die "etcd not found after installing etcd-server"
}

# ---- host: sysctls, bridge and route, cgroups

kube_save_sysctls() {
	[ -s "$KUBE_SYSCTLS" ] && return 0   # saved at the first start: later values are ours
	local k
	for k in "${KUBE_SYSCTL_KEYS[@]}"; do
		[ -e "/proc/sys/${k//.//}" ] && printf '%s=%s\n' "$k" "$(sysctl -n "$k")"
	done >"$KUBE_SYSCTLS.tmp"
	mv "$KUBE_SYSCTLS.tmp" "$KUBE_SYSCTLS"
}

kube_restore_sysctls() {
	[ -s "$KUBE_SYSCTLS" ] || return 0
	local k v
	while IFS='=' read -r k v; do
		[ -e "/proc/sys/${k//.//}" ] || continue
		if [ "$(sysctl -n "$k")" != "$v" ]; then
			log "restoring sysctl $k=$v (was $(sysctl -n "$k"))"
			sysctl -q -w "$k=$v" || log "could not restore sysctl $k=$v"
		fi
	done <"$KUBE_SYSCTLS"
	rm -f "$KUBE_SYSCTLS"
}

kube_net_up() {
	if ! ip link show "$KUBE_BRIDGE" >/dev/null 2>&1; then
		log "creating bridge $KUBE_BRIDGE $KUBE_NODE_IP/24 (node IP and pod network) and a route for $KUBE_SERVICE_CIDR"
		ip link add "$KUBE_BRIDGE" type bridge
	fi
	grep -q " $KUBE_NODE_IP/24 " <<<"$(ip addr show dev "$KUBE_BRIDGE")" ||
		ip addr add "$KUBE_NODE_IP/24" dev "$KUBE_BRIDGE"
	ip link set "$KUBE_BRIDGE" up
	# Service IPs from the host: kube-proxy's output chain translates them, this route gets them
	# there (from the node IP).
	ip route replace "$KUBE_SERVICE_CIDR" dev "$KUBE_BRIDGE" src "$KUBE_NODE_IP"
}

kube_net_down() {
	if [ -n "$(ip route show "$KUBE_SERVICE_CIDR" 2>/dev/null)" ]; then
		ip route del "$KUBE_SERVICE_CIDR" 2>/dev/null || true
	fi
	if ip link show "$KUBE_BRIDGE" >/dev/null 2>&1; then
		log "removing bridge $KUBE_BRIDGE"
		ip link del "$KUBE_BRIDGE"
	fi
	local fam
	for fam in ip ip6; do
		if nft list table "$fam" kube-proxy >/dev/null 2>&1; then
			log "removing nft table $fam kube-proxy"
			nft delete table "$fam" kube-proxy
		fi
	done
}

# The v1 hierarchies (this machine's cgroup v1; the unified one of a hybrid setup is left alone).
kube_cgroup_dirs() { awk '$3 == "cgroup" { print $2 }' /proc/self/mounts; }

kube_cgroups_up() {
	local h
	for h in $(kube_cgroup_dirs); do
		[ -d "$h$KUBE_CGROUP_ROOT" ] && continue
		mkdir "$h$KUBE_CGROUP_ROOT"
		if [ -e "$h/cpuset.cpus" ]; then
			cat "$h/cpuset.cpus" >"$h$KUBE_CGROUP_ROOT/cpuset.cpus"
			cat "$h/cpuset.mems" >"$h$KUBE_CGROUP_ROOT/cpuset.mems"
		fi
	done
}

kube_cgroups_down() {
	local h d n=0
	for h in $(kube_cgroup_dirs); do
		[ -d "$h$KUBE_CGROUP_ROOT" ] || continue
		n=1
		# Deepest first; a cgroup that still has a process stays (and is reported).
		while read -r d; do
			rmdir "$d" 2>/dev/null || log "cgroup $d not removed (a process left in it?)"
		done < <(find "$h$KUBE_CGROUP_ROOT" -depth -type d)
	done
	[ "$n" = 0 ] || log "removed cgroups $KUBE_CGROUP_ROOT"
}

# ---- certificates and kubeconfigs (openssl, EC P-256, 10 years: a throw-away test CA)

kube_cert() { # NAME SUBJECT EXT
	local n=$1
	[ -s "$KUBE_PKI/$n.crt" ] && return 0
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$KUBE_PKI/$n.key" \
		-subj "$2" -out "$KUBE_PKI/$n.csr" 2>/dev/null
	printf '%s\n' "$3" >"$KUBE_PKI/$n.ext"
	openssl x509 -req -in "$KUBE_PKI/$n.csr" -CA "$KUBE_PKI/ca.crt" -CAkey "$KUBE_PKI/ca.key" -CAcreateserial \
		-days 3650 -extfile "$KUBE_PKI/$n.ext" -out "$KUBE_PKI/$n.crt" 2>/dev/null
	rm -f "$KUBE_PKI/$n.csr" "$KUBE_PKI/$n.ext"
}

kube_kubeconfig() { # NAME (cert NAME, file KUBE_DIR/NAME.kubeconfig)
	local f=$KUBE_DIR/$1.kubeconfig
	[ -s "$f" ] && return 0
	local k="$KUBE_BIN/kubectl --kubeconfig $f.tmp"
	rm -f "$f.tmp"
	$k config set-cluster postgraas-testenv --server="https://127.0.0.1:$KUBE_APISERVER_PORT" \
		--certificate-authority="$KUBE_PKI/ca.crt" --embed-certs=true >/dev/null
	$k config set-credentials "$1" --client-certificate="$KUBE_PKI/$1.crt" --client-key="$KUBE_PKI/$1.key" \
		--embed-certs=true >/dev/null
	$k config set-context postgraas-testenv --cluster=postgraas-testenv --user="$1" >/dev/null
	$k config use-context postgraas-testenv >/dev/null
	chmod 600 "$f.tmp"
	mv "$f.tmp" "$f"
}

kube_pki() {
	mkdir -p "$KUBE_PKI"
	chmod 700 "$KUBE_PKI"
	if [ ! -s "$KUBE_PKI/ca.crt" ]; then
		log "making the cluster's certificates (openssl) in $KUBE_PKI"
		rm -f "$KUBE_PKI"/* "$KUBE_DIR"/*.kubeconfig
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
			-keyout "$KUBE_PKI/ca.key" -out "$KUBE_PKI/ca.crt" -subj "/CN=postgraas-testenv-kubernetes-ca" \
			-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
	fi
	[ -s "$KUBE_PKI/sa.key" ] || {
		openssl ecparam -name prime256v1 -genkey -noout -out "$KUBE_PKI/sa.key.tmp" 2>/dev/null
		openssl ec -in "$KUBE_PKI/sa.key.tmp" -pubout -out "$KUBE_PKI/sa.pub" 2>/dev/null
		mv "$KUBE_PKI/sa.key.tmp" "$KUBE_PKI/sa.key"
	}
	local client='keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'
	kube_cert apiserver /CN=kube-apiserver "keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$KUBE_NODE_IP,IP:$KUBE_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	kube_cert admin /O=system:masters/CN=postgraas-testenv-admin "$client"
	kube_cert apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client "$client"
	kube_cert controller-manager /CN=system:kube-controller-manager "$client"
	kube_cert scheduler /CN=system:kube-scheduler "$client"
	kube_cert kubelet "/O=system:nodes/CN=system:node:$KUBE_NODE" "$client"
	kube_cert kube-proxy /CN=system:kube-proxy "$client"
	local n
	for n in admin controller-manager scheduler kubelet kube-proxy; do kube_kubeconfig "$n"; done
}

# ---- containerd of our own, pause image, the postgres image

kube_containerd_conf() {
	cat <<EOF
# Written by .ci/testenv.sh: the test cluster's containerd (not the Docker engine's).
version = 2
root = "$KUBE_CTRD/root"
state = "$KUBE_CTRD/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$KUBE_CTRD_SOCK"
[ttrpc]
  address = "$KUBE_CTRD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$KUBE_CTRD/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$KUBE_PAUSE_IMAGE"
  # Without it runc fails ("can't get final child's PID from pipe: EOF"): root here may not
  # lower oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$KUBE_CTRD/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$KUBE_CNI_BIN"
    conf_dir = "$KUBE_DIR/cni/net.d"
EOF
}

kube_cni_conf() {
	cat <<EOF
{
  "cniVersion": "1.0.0",
  "name": "postgraas-testenv",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$KUBE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$KUBE_POD_CIDR", "rangeStart": "10.244.0.10", "gateway": "$KUBE_NODE_IP" }]],
        "dataDir": "$KUBE_DIR/cni/ipam"
      }
    }
  ]
}
EOF
}

kube_containerd_up() {
	mkdir -p "$KUBE_CTRD" "$KUBE_DIR/cni/net.d"
	local conf=$KUBE_CTRD/config.toml
	if [ "$(cat "$conf" 2>/dev/null)" != "$(kube_containerd_conf)" ]; then
		kube_containerd_conf >"$conf"
		kube_stop containerd "$(command -v containerd)"
	fi
	[ "$(cat "$KUBE_DIR/cni/net.d/10-postgraas.conflist" 2>/dev/null)" = "$(kube_cni_conf)" ] ||
		kube_cni_conf >"$KUBE_DIR/cni/net.d/10-postgraas.conflist"
	kube_start containerd "$(command -v containerd)" --config "$conf"
	wait_for 30 "containerd answering on $KUBE_CTRD_SOCK" containerd kctr version
}

# The sandbox ("pause") image: a static Go binary that sleeps until signalled, packed as a
# docker-save archive (uncompressed layer) that ctr imports. No registry needed.
kube_pause_image() {
	grep -q . <<<"$(kctr images ls -q "name==$KUBE_PAUSE_IMAGE")" && return 0
	local d t diff cfg
	t=$(now)
	d=$(mktemp -d)
	mkdir -p "$d/src" "$d/root" "$d/img"
	cat >"$d/src/main.go" <<'EOF'
// pause: the sandbox process of a pod, sleeps until SIGINT or SIGTERM.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c
}
EOF
	printf 'module pause\n\ngo 1.21\n' >"$d/src/go.mod"
	(cd "$d/src" && GOWORK=off GOFLAGS='' CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$d/root/pause" .) ||
		die "building the pause binary failed"
	tar -C "$d/root" --owner=0 --group=0 --numeric-owner -cf "$d/img/layer.tar" pause
	diff=$(sha256sum "$d/img/layer.tar" | cut -c1-64)
	printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
		"$diff" >"$d/img/config.json"
	cfg=$(sha256sum "$d/img/config.json" | cut -c1-64)
	mv "$d/img/config.json" "$d/img/$cfg.json"
	printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$cfg" "$KUBE_PAUSE_IMAGE" >"$d/img/manifest.json"
	tar -C "$d/img" -cf "$d/pause.tar" .
	kctr images import "$d/pause.tar" >/dev/null || die "ctr import of the pause image failed"
	rm -rf "$d"
	log "pause image $KUBE_PAUSE_IMAGE built and imported in $(since "$t") s"
}

# kube_image_ref IMAGE: IMAGE as containerd and the CRI name it (docker.io/library/... added).
kube_image_ref() {
	local r=$1 first=${1%%/*}
	if [[ $r != */* ]]; then
		r=docker.io/library/$r
	elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
		r=docker.io/$r
	fi
	printf '%s' "$r"
}

# The docker part's image (the stand-in here), into containerd's k8s.io namespace: again only
# when the engine's image ID changed. Sets KUBE_IMAGE.
kube_test_image() {
	local id stamp=$KUBE_CTRD/image.id t
	KUBE_IMAGE=$(kube_image_ref "$TEST_IMAGE")
	id=$(docker image inspect --format '{{.Id}}' "$TEST_IMAGE") || die "image $TEST_IMAGE not in the Docker engine"
	if [ "$(cat "$stamp" 2>/dev/null)" = "$TEST_IMAGE $id" ] && grep -q . <<<"$(kctr images ls -q "name==$KUBE_IMAGE")"; then
		return 0
	fi
	t=$(now)
	log "importing $TEST_IMAGE into the cluster's containerd (docker save | ctr import; ~20 s)"
	docker save "$TEST_IMAGE" | kctr images import - >/dev/null || die "importing $TEST_IMAGE into containerd failed"
	grep -q . <<<"$(kctr images ls -q "name==$KUBE_IMAGE")" || die "$KUBE_IMAGE not in containerd after the import"
	echo "$TEST_IMAGE $id" >"$stamp"
	log "imported $TEST_IMAGE as $KUBE_IMAGE in $(since "$t") s"
}

# ---- components

kube_kubelet_conf() {
	cat <<EOF
# Written by .ci/testenv.sh.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $KUBE_NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$KUBE_PKI/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: "unix://$KUBE_CTRD_SOCK"
cgroupDriver: cgroupfs
cgroupRoot: "$KUBE_CGROUP_ROOT"
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
podLogsDir: "$KUBE_DIR/pod-logs"
resolvConf: /etc/resolv.conf
maxPods: 50
serializeImagePulls: false
# The imported images cannot be pulled again: never collect them; evict only when really full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
EOF
}

kube_proxy_conf() {
	cat <<EOF
# Written by .ci/testenv.sh.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: "$KUBE_DIR/kube-proxy.kubeconfig"}
hostnameOverride: $KUBE_NODE
clusterCIDR: $KUBE_POD_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$KUBE_NODE_IP/32"]
# Leave the conntrack sysctls as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

kube_storage_class() {
	cat <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $KUBE_STORAGE_CLASS
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
}

kube_node_ready() {
	[ "$(kctl get node "$KUBE_NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

kube_apiserver_ready() { kctl get --raw /readyz --request-timeout=5s; }

# ensure_kubernetes: start what is not running (TEST_IMAGE from the docker part). Sets KUBE_IMAGE.
ensure_kubernetes() {
	local t pid p
	t=$(now)
	KUBE_STARTED=0
	ensure_kube_packages
	mkdir -p "$KUBE_DIR" "$KUBE_LOG" "$KUBE_RUN" "$KUBE_DIR/etcd" "$KUBE_DIR/kubelet" "$KUBE_DIR/pod-logs" \
		"$KUBE_DIR/apiserver"
	chmod 700 "$KUBE_DIR" "$KUBE_DIR/etcd"
	# Fixed paths kubelet and containerd's CNI make whatever they are told: those missing before
	# the first start are ours, `down` removes them.
	if [ ! -e "$KUBE_HOST_PATHS" ]; then
		for p in "${KUBE_FIXED_PATHS[@]}"; do [ -e "$p" ] || echo "$p"; done >"$KUBE_HOST_PATHS"
	fi
	kube_save_sysctls
	kube_net_up
	kube_cgroups_up
	kube_pki
	kube_containerd_up
	kube_pause_image
	kube_test_image

	kube_start etcd "$(command -v etcd)" --name postgraas-testenv --data-dir "$KUBE_DIR/etcd" \
		--listen-client-urls "http://127.0.0.1:$KUBE_ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$KUBE_ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$KUBE_ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$KUBE_ETCD_PEER_PORT" \
		--initial-cluster "postgraas-testenv=http://127.0.0.1:$KUBE_ETCD_PEER_PORT" \
		--unsafe-no-fsync --quota-backend-bytes 2147483648
	wait_for 30 "etcd health" etcd curl -fsS "http://127.0.0.1:$KUBE_ETCD_PORT/health"

	kube_start kube-apiserver "$KUBE_BIN/kube-apiserver" \
		--etcd-servers="http://127.0.0.1:$KUBE_ETCD_PORT" \
		--bind-address=127.0.0.1 --secure-port="$KUBE_APISERVER_PORT" --advertise-address="$KUBE_NODE_IP" \
		--cert-dir="$KUBE_DIR/apiserver" \
		--tls-cert-file="$KUBE_PKI/apiserver.crt" --tls-private-key-file="$KUBE_PKI/apiserver.key" \
		--client-ca-file="$KUBE_PKI/ca.crt" \
		--kubelet-client-certificate="$KUBE_PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$KUBE_PKI/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP,Hostname \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$KUBE_PKI/sa.pub" --service-account-signing-key-file="$KUBE_PKI/sa.key" \
		--service-cluster-ip-range="$KUBE_SERVICE_CIDR" \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--allow-privileged=true --profiling=false
	wait_for 90 "kube-apiserver /readyz" kube-apiserver kube_apiserver_ready

	kube_start kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
		--kubeconfig="$KUBE_DIR/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$KUBE_DIR/controller-manager.kubeconfig" \
		--authorization-kubeconfig="$KUBE_DIR/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
		--service-account-private-key-file="$KUBE_PKI/sa.key" --root-ca-file="$KUBE_PKI/ca.crt" \
		--cluster-signing-cert-file="$KUBE_PKI/ca.crt" --cluster-signing-key-file="$KUBE_PKI/ca.key" \
		--service-cluster-ip-range="$KUBE_SERVICE_CIDR" \
		--enable-hostpath-provisioner=true --profiling=false
	kube_start kube-scheduler "$KUBE_BIN/kube-scheduler" \
		--kubeconfig="$KUBE_DIR/scheduler.kubeconfig" \
		--authentication-kubeconfig="$KUBE_DIR/scheduler.kubeconfig" \
		--authorization-kubeconfig="$KUBE_DIR/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false --profiling=false

	[ "$(cat "$KUBE_DIR/kubelet.yaml" 2>/dev/null)" = "$(kube_kubelet_conf)" ] || {
		kube_kubelet_conf >"$KUBE_DIR/kubelet.yaml"
		kube_stop kubelet "$KUBE_BIN/kubelet"
	}
	kube_start kubelet "$KUBE_BIN/kubelet" --config="$KUBE_DIR/kubelet.yaml" \
		--kubeconfig="$KUBE_DIR/kubelet.kubeconfig" --root-dir="$KUBE_DIR/kubelet" \
		--cert-dir="$KUBE_DIR/kubelet/pki" --hostname-override="$KUBE_NODE" --node-ip="$KUBE_NODE_IP"
	[ "$(cat "$KUBE_DIR/kube-proxy.yaml" 2>/dev/null)" = "$(kube_proxy_conf)" ] || {
		kube_proxy_conf >"$KUBE_DIR/kube-proxy.yaml"
		kube_stop kube-proxy "$KUBE_BIN/kube-proxy"
	}
	kube_start kube-proxy "$KUBE_BIN/kube-proxy" --config="$KUBE_DIR/kube-proxy.yaml"

	kctl get storageclass "$KUBE_STORAGE_CLASS" >/dev/null 2>&1 ||
		kube_storage_class | kctl apply -f - >/dev/null || die "creating StorageClass $KUBE_STORAGE_CLASS failed"
	wait_for 120 "Ready node $KUBE_NODE" kubelet kube_node_ready
	# The controller manager makes the namespace's default ServiceAccount a moment after it starts; a
	# pod created before that is refused (seen when a test created one right after the start).
	wait_for 60 "ServiceAccount default/default" kube-controller-manager kctl -n default get serviceaccount default
	for pid in kube-controller-manager kube-scheduler kube-proxy; do
		kube_pid "$pid" "$KUBE_BIN/$pid" >/dev/null || { tail -n 30 "$KUBE_LOG/$pid.log" >&2; die "$pid is not running (log: $KUBE_LOG/$pid.log)"; }
	done
	if [ "$KUBE_STARTED" = 1 ]; then
		log "Kubernetes v$KUBE_VERSION node $KUBE_NODE Ready in $(since "$t") s (kubeconfig: $KUBECONFIG_ADMIN)"
	else
		log "Kubernetes v$KUBE_VERSION already running (node $KUBE_NODE Ready, kubeconfig: $KUBECONFIG_ADMIN)"
	fi
}

# stop_kubernetes: the order found to leave the host clean. Workloads through the API first (CNI
# DEL and unmounts by kubelet, PVs deleted by the provisioner), then the components, leftover
# containerd tasks, containerd, mounts under KUBE_DIR (deepest first), kube-proxy's nft tables,
# the bridge and route, the cgroups, the sysctls. The cluster's data (etcd, kubelet, CNI IPAM)
# goes too: the next `up` starts an empty cluster; certificates and the images in containerd
# stay. Safe when nothing runs.
stop_kubernetes() {
	local t c pid m ids
	t=$(now)
	if [ ! -d "$KUBE_DIR" ]; then
		log "no Kubernetes state in $KUBE_DIR: nothing to stop"
		return 0
	fi
	if [ -x "$KUBE_BIN/kubectl" ] && [ -s "$KUBECONFIG_ADMIN" ] && kube_apiserver_ready >/dev/null 2>&1; then
		log "deleting the cluster's workloads through the API"
		ids=$(kctl get namespaces -o name 2>/dev/null | grep -vxE 'namespace/(default|kube-system|kube-public|kube-node-lease)' || true)
		# shellcheck disable=SC2086 # a list of names
		[ -z "$ids" ] || kctl delete $ids --wait=false --ignore-not-found >/dev/null 2>&1 || true
		kctl delete statefulsets,deployments,replicasets,daemonsets,jobs,cronjobs --all -A --wait=false >/dev/null 2>&1 || true
		kctl delete pods --all -A --grace-period=5 --wait=false >/dev/null 2>&1 || true
		kctl delete pvc --all -A --wait=false >/dev/null 2>&1 || true
		for _ in $(seq 1 300); do # 60 s
			[ -z "$(kctl get pods -A -o name 2>/dev/null)" ] && break
			sleep 0.2
		done
		[ -z "$(kctl get pods -A -o name 2>/dev/null)" ] || log "pods left after 60 s: stopping anyway"
		for _ in $(seq 1 150); do # 30 s: the provisioner deletes released PVs and their directories
			[ -z "$(kctl get pv -o name 2>/dev/null)" ] && break
			sleep 0.2
		done
		[ -z "$(kctl get pv -o name 2>/dev/null)" ] || log "PVs left after 30 s: stopping anyway"
	fi
	# The apiserver's clients first, together; then it, then its store.
	kube_stop kube-proxy "$KUBE_BIN/kube-proxy" kubelet "$KUBE_BIN/kubelet" \
		kube-scheduler "$KUBE_BIN/kube-scheduler" kube-controller-manager "$KUBE_BIN/kube-controller-manager"
	kube_stop kube-apiserver "$KUBE_BIN/kube-apiserver"
	kube_stop etcd "$(command -v etcd || echo /usr/bin/etcd)"
	if pid=$(kube_pid containerd "$(command -v containerd || echo /usr/bin/containerd)"); then
		ids=$(kctr tasks ls -q 2>/dev/null || true)
		if [ -n "$ids" ]; then
			log "killing $(echo "$ids" | wc -l) leftover container task(s)"
			for c in $ids; do kctr tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
			sleep 1
			for c in $ids; do kctr tasks rm -f "$c" >/dev/null 2>&1 || true; done
		fi
		ids=$(kctr containers ls -q 2>/dev/null || true)
		for c in $ids; do kctr containers rm "$c" >/dev/null 2>&1 || true; done
		kube_stop containerd "$(command -v containerd)"
	fi
	# Shims of our containerd that outlived it (found by its socket in their command line).
	for pid in $(grep -lzF -- "$KUBE_CTRD_SOCK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
		[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/containerd-shim-runc-v2 ] || continue
		log "killing leftover containerd shim (pid $pid)"
		kill -KILL "$pid" 2>/dev/null || true
	done
	# Deepest first; lazily, so a busy one goes when its last user does.
	while read -r m; do
		umount -l "$m" 2>/dev/null || log "could not unmount $m"
	done < <(awk -v d="$KUBE_DIR/" 'index($5 "/", d) == 1 { print length($5) "\t" $5 }' /proc/self/mountinfo |
		sort -rn | cut -f2- | sed 's/\\040/ /g')
	kube_net_down
	kube_cgroups_down
	kube_restore_sysctls
	if [ -e "$KUBE_HOST_PATHS" ]; then
		while read -r m; do
			[ -n "$m" ] && [ -e "$m" ] || continue
			log "removing $m (made by the cluster)"
			rm -rf "$m"
		done <"$KUBE_HOST_PATHS"
		rm -f "$KUBE_HOST_PATHS"
	fi
	# The hostpath provisioner's fixed directory holds only this cluster's volumes.
	rm -rf "$KUBE_HOSTPATH_DIR"
	rm -rf "$KUBE_DIR/etcd" "$KUBE_DIR/kubelet" "$KUBE_DIR/cni/ipam" "$KUBE_DIR/pod-logs" "$KUBE_CTRD/state" \
		"$KUBE_CTRD/runc" "$KUBE_RUN"
	log "Kubernetes stopped and its host changes undone in $(since "$t") s"
}

# kube_smoke: a StatefulSet of the test image with a PVC from a volumeClaimTemplate becomes
# Ready, and psql from the host logs in through a ClusterIP and a NodePort Service. ~15 s.
kube_smoke() {
	local ns=postgraas-smoke pw t ip port ok
	t=$(now)
	kube_apiserver_ready >/dev/null 2>&1 || die "the cluster does not answer: run '$0 up kubernetes' first"
	[ -s "$KUBE_CTRD/image.id" ] || die "no test image imported into the cluster: run '$0 up kubernetes' first"
	KUBE_IMAGE=$(kube_image_ref "$(cut -d' ' -f1 "$KUBE_CTRD/image.id")")
	pw=$(gen_password)
	kctl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
	kctl create namespace "$ns" >/dev/null
	kctl -n "$ns" create secret generic pg --from-literal=password="$pw" >/dev/null
	kctl -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: pg}
spec:
  serviceName: pg
  replicas: 1
  selector: {matchLabels: {app: pg}}
  template:
    metadata: {labels: {app: pg}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: postgres
        image: $KUBE_IMAGE
        imagePullPolicy: IfNotPresent
        env:
        - {name: POSTGRES_USER, value: smoke}
        - {name: POSTGRES_DB, value: smoke}
        - name: POSTGRES_PASSWORD
          valueFrom: {secretKeyRef: {name: pg, key: password}}
        ports: [{containerPort: 5432}]
        readinessProbe:
          exec: {command: [pg_isready, -U, smoke, -d, smoke, -h, 127.0.0.1]}
          periodSeconds: 1
        volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Service
metadata: {name: pg}
spec:
  selector: {app: pg}
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: pg-nodeport}
spec:
  type: NodePort
  selector: {app: pg}
  ports: [{port: 5432}]
EOF
	if ! kctl -n "$ns" rollout status statefulset/pg --timeout=120s >&2; then
		kctl -n "$ns" describe pod pg-0 >&2 || true
		kctl -n "$ns" logs pg-0 >&2 || true
		die "kube-smoke: the StatefulSet did not become Ready"
	fi
	log "kube-smoke: StatefulSet with PVC ($(kctl -n "$ns" get pvc data-pg-0 -o 'jsonpath={.spec.volumeName}')) Ready after $(since "$t") s"
	ip=$(kctl -n "$ns" get svc pg -o 'jsonpath={.spec.clusterIP}')
	port=$(kctl -n "$ns" get svc pg-nodeport -o 'jsonpath={.spec.ports[0].nodePort}')
	for target in "$ip:5432" "$KUBE_NODE_IP:$port"; do
		ok=0
		for _ in $(seq 1 100); do # 20 s: kube-proxy syncs the new Service
			if PGPASSWORD=$pw psql -X -At -c 'SELECT 1' \
				"host=${target%:*} port=${target#*:} user=smoke dbname=smoke sslmode=disable connect_timeout=2" >/dev/null 2>&1; then
				ok=1
				break
			fi
			sleep 0.2
		done
		[ "$ok" = 1 ] || die "kube-smoke: no psql login through $target (namespace $ns kept for a look)"
		log "kube-smoke: psql login from the host through $target OK"
	done
	kctl delete namespace "$ns" --wait=true --timeout=60s >/dev/null
	for _ in $(seq 1 150); do
		[ -z "$(kctl get pv -o name)" ] && break
		sleep 0.2
	done
	[ -z "$(kctl get pv -o name)" ] || die "kube-smoke: PV left after deleting the namespace"
	log "kube-smoke passed in $(since "$t") s (objects and PV deleted)"
}

# ---------------------------------------------------------------- main

ALL_PARTS=(pg docker ssh terraform kubernetes)
PARTS=()
has_part() { local p; for p in "${PARTS[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

# cmd_up [--matrix] [PART...]: --matrix also provides the CLIs of the matrix (make test runs a
# subset of the acceptance tests under each).
cmd_up() {
	local t0 p file matrix=0
	t0=$(now)
	for p in "$@"; do
		if [ "$p" = --matrix ]; then
			matrix=1
			continue
		fi
		case " ${ALL_PARTS[*]} " in *" $p "*) ;; *) die "unknown part '$p' (usage: $0 up [--matrix] [${ALL_PARTS[*]}])" ;; esac
		has_part "$p" || PARTS+=("$p")
	done
	if [ "${#PARTS[@]}" = 0 ]; then
		PARTS=("${ALL_PARTS[@]}")
		file=$ENV_FILE
	else
		# The ssh part reaches the engine of the docker part, the kubernetes part runs its image;
		# the matrix goes with terraform.
		{ has_part ssh || has_part kubernetes; } && ! has_part docker && PARTS+=(docker)
		[ "$matrix" = 0 ] || has_part terraform || PARTS+=(terraform)
		file=$STATE/env-$(printf '%s\n' "${PARTS[@]}" | sort | paste -sd- -).sh
	fi
	mkdir -p "$STATE"
	# Builds first, outside the lock below: a build takes minutes and has a lock of its own.
	if has_part kubernetes; then ensure_kube_built; fi
	if has_part terraform; then
		ensure_terraform
		if [ "$matrix" = 1 ]; then
			ensure_matrix build
		else
			ensure_matrix # the env file keeps naming those already built
		fi
	fi
	# One `up` at a time per state dir (several people may run `make test` at once). The
	# daemons we start must not inherit this fd, or they would hold the lock forever.
	exec 9>"$STATE/up.lock"
	if ! flock -n 9; then
		log "another '$0 up' is running for $STATE: waiting for it (at most 20 min)"
		flock -w 1200 9 || die "timed out waiting for the lock $STATE/up.lock"
	fi
	if has_part pg; then ensure_pg_server; fi
	if has_part docker; then
		ensure_docker
		ensure_image
	fi
	if has_part ssh; then ensure_sshd; fi
	if has_part kubernetes; then ensure_kubernetes; fi
	write_env "$file"
	log "test environment (${PARTS[*]}) ready in $(since "$t0") s; env file: $file"
	printf '%s\n' "$file"
}

# cmd_down [PART...]: stop what `up` started of those parts (all without one). Kubernetes goes
# first: its teardown talks to its API and needs nothing of the others. The terraform part has
# nothing running.
cmd_down() {
	local p
	for p in "$@"; do
		case " ${ALL_PARTS[*]} " in *" $p "*) ;; *) die "unknown part '$p' (usage: $0 down [${ALL_PARTS[*]}])" ;; esac
		has_part "$p" || PARTS+=("$p")
	done
	[ "${#PARTS[@]}" != 0 ] || PARTS=("${ALL_PARTS[@]}")
	if has_part kubernetes; then stop_kubernetes; fi
	if has_part pg; then stop_pg; fi
	if has_part ssh; then stop_sshd; fi
	if has_part docker; then stop_dockerd; fi
}

# cmd_clean stops the environment and removes what it and the tests made. Containers and
# their anonymous volumes are found by the provider's label or by the stand-in image.
cmd_clean() {
	local ids
	if docker_answers; then
		# Instances, and meta DB containers (the provider never removes those: this is the
		# explicit request to, for a test environment; their volumes carry the label too).
		ids=$(docker ps -aq --filter label=postgraas.instance; docker ps -aq --filter label=postgraas.metadb
			docker ps -aq --filter "ancestor=$STANDIN_IMAGE")
		ids=$(printf '%s\n' $ids | sort -u)
		if [ -n "$ids" ]; then
			log "removing $(printf '%s\n' $ids | wc -l) container(s) made by the tests and demos, with their volumes"
			docker rm -f -v $ids >/dev/null || log "some containers could not be removed"
		fi
		ids=$(docker volume ls -q --filter label=postgraas.metadb)
		[ -z "$ids" ] || docker volume rm $ids >/dev/null || log "some meta DB volumes could not be removed"
		for p in "$STANDIN_IMAGE" "$STANDIN_ROOTFS_IMAGE"; do
			if docker image inspect "$p" >/dev/null 2>&1; then
				log "removing image $p"
				docker rmi -f "$p" >/dev/null || log "could not remove image $p"
			fi
		done
	else
		log "no Docker engine answers: no containers or images to remove"
	fi
	stop_kubernetes
	stop_pg
	stop_sshd
	stop_dockerd
	remove_old_ssh_block
	if [ "${POSTGRAAS_CLEAN_BUILDS:-0}" = 1 ]; then
		log "removing $STATE"
		rm -rf "$STATE"
	else
		log "removing $STATE except the CLIs and Kubernetes built there (POSTGRAAS_CLEAN_BUILDS=1 removes them too)"
		find "$STATE" -mindepth 1 -maxdepth 1 ! -name 'terraform-*' ! -name 'tofu-*' ! -name 'kubernetes-v*' -exec rm -rf {} +
	fi
}

case "${1:-}" in
up) cmd_up "${@:2}" ;;
env)
	[ -s "$ENV_FILE" ] || die "no env file at $ENV_FILE: run '$0 up' first"
	printf '%s\n' "$ENV_FILE"
	;;
clean) cmd_clean ;;
down) cmd_down "${@:2}" ;;
kube-smoke) kube_smoke ;;
kube-status)
	# Exit 0 when a component of the cluster runs (whoever started it), 3 when none does.
	for c in etcd containerd "${KUBE_CMDS[@]}"; do
		case $c in etcd | containerd) b=$(command -v "$c" || echo "/usr/bin/$c") ;; *) b=$KUBE_BIN/$c ;; esac
		if kube_pid "$c" "$b" >/dev/null; then echo running; exit 0; fi
	done
	echo stopped
	exit 3
	;;
terraform)
	ensure_terraform
	printf '%s\n' "$TERRAFORM_BIN"
	;;
matrix)
	ensure_matrix build
	printf '%s\n' "$TOFU_BIN" "$TERRAFORM_NEWEST_BIN"
	;;
verify-image)
	ensure_docker
	verify_image "${2:-$STANDIN_IMAGE}"
	;;
*)
	echo "usage: $0 up [--matrix] [PART...]|env|down [PART...]|clean|terraform|matrix|verify-image [IMAGE]|kube-status|kube-smoke" >&2
	exit 2
	;;
esac
