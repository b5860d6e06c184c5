#!/bin/bash
# Entrypoint of the stand-in image postgraas-standin/postgres:15 (built by .ci/testenv.sh from
# Debian's postgresql-15 package, because no container registry is reachable on the test machines).
#
# It honours the part of the official postgres image's contract that the provider relies on:
#   POSTGRES_PASSWORD  superuser password (required unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER      superuser name (default: postgres)
#   POSTGRES_DB        database created on first start (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256)
#   PGDATA             data directory (default /var/lib/postgresql/data, a VOLUME)
#   /docker-entrypoint-initdb.d/*.sql and *.sh run once on first start
# The data directory is a copy of the image's template rather than initdb's work whenever the
# request is the usual one (scram-sha-256, no POSTGRES_INITDB_ARGS), and it is personalised (the
# superuser's name and password, the database) by PostgreSQL's single-user mode, which opens no
# socket at all: about 0.25 s of CPU where initdb and a temporary server took 1.5 s, and nothing
# can connect before initialisation is complete. Only /docker-entrypoint-initdb.d scripts get a
# temporary server, on the unix socket only. The server listens on '*' port 5432 after that.
# `docker-entrypoint.sh standin-template` makes the template, once, when .ci/testenv.sh builds
# the image.
set -Eeuo pipefail

export PATH=/usr/lib/postgresql/15/bin:$PATH
export PGDATA=${PGDATA:-/var/lib/postgresql/data}
export LANG=${LANG:-C.UTF-8}

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }

TEMPLATE=/var/lib/postgraas-standin/template

# init_cluster DIR SUPERUSER AUTH [PWFILE]: initdb as for every stand-in cluster, template or
# not, and the rule that lets AUTH logins in over TCP.
init_cluster() {
	# shellcheck disable=SC2086
	initdb -D "$1" --username="$2" ${4:+--pwfile="$4"} --encoding=UTF8 --locale=C.UTF-8 \
		--auth-local=trust --auth-host="$3" --no-sync ${POSTGRES_INITDB_ARGS:-} >/dev/null
	printf '\nhost all all all %s\n' "$3" >>"$1/pg_hba.conf"
}

sql_literal() { printf "'%s'" "${1//\'/\'\'}"; }
sql_ident() { printf '"%s"' "${1//\"/\"\"}"; }

# single STATEMENT...: runs the statements in single-user mode against PGDATA's database postgres.
# A statement that fails is not echoed (log_min_error_statement), as it may hold the password.
# fsync=off, like initdb --no-sync above: this is a throw-away test image, and a container stopped
# before the marker is written is initialised again.
single() {
	local out
	out=$(mktemp)
	if ! printf '%s;\n\n' "$@" | postgres --single -j -D "$PGDATA" -c fsync=off -c log_min_error_statement=panic \
		-c exit_on_error=on postgres >/dev/null 2>"$out"; then
		cat "$out" >&2
		rm -f "$out"
		return 1
	fi
	rm -f "$out"
}

# The template: its bootstrap superuser (OID 10) is renamed to POSTGRES_USER at first start.
if [ "${1:-}" = standin-template ]; then
	if [ "$(id -u)" = 0 ]; then
		mkdir -p "$(dirname "$TEMPLATE")"
		chown postgres:postgres "$(dirname "$TEMPLATE")"
		exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" standin-template
	fi
	init_cluster "$TEMPLATE" standin_bootstrap scram-sha-256
	exit 0
fi

# `docker run IMAGE -c foo=bar` passes flags to postgres, like the official image.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
	set -- postgres "$@"
fi

if [ "$1" != postgres ]; then
	exec "$@"
fi
shift

if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	chmod 2775 /var/run/postgresql
	# setpriv execs (no intermediate process), so postgres stays PID 1 and gets docker's signals.
	exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" postgres "$@"
fi

POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
POSTGRES_HOST_AUTH_METHOD=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

# Initialisation is made all-or-nothing with a marker written last: a container stopped or
# killed half-way through (PG_VERSION present, marker absent) is initialised afresh next start.
INIT_MARKER=$PGDATA/.standin-initialised
if [ -s "$PGDATA/PG_VERSION" ] && [ ! -e "$INIT_MARKER" ]; then
	log "found a half-initialised $PGDATA: starting over"
	find "$PGDATA" -mindepth 1 -delete
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		cat >&2 <<-'EOM'
		Error: Database is uninitialized and superuser password is not specified.
		       You must specify POSTGRES_PASSWORD to a non-empty value for the
		       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".
		EOM
		exit 1
	fi
	# `docker stop` during initialisation (bash is PID 1 until the final exec, and PID 1
	# ignores signals it has no handler for): stop a temporary server and leave (the marker is
	# not written, so the next start initialises again).
	trap 'log "stopped during initialisation"; pg_ctl -D "$PGDATA" -m immediate stop >/dev/null 2>&1; exit 143' INT TERM
	log "initialising $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
	sql=()
	if [ -s "$TEMPLATE/PG_VERSION" ] && [ "$POSTGRES_HOST_AUTH_METHOD" = scram-sha-256 ] && [ -z "${POSTGRES_INITDB_ARGS:-}" ]; then
		cp -a "$TEMPLATE/." "$PGDATA/"
		# A session cannot rename its own role, and single-user mode's session is the bootstrap
		# superuser's, so its catalog row is renamed directly. The password is stored as a SCRAM
		# verifier, as initdb --pwfile does.
		sql+=("UPDATE pg_authid SET rolname = $(sql_literal "$POSTGRES_USER") WHERE oid = 10"
			"ALTER ROLE $(sql_ident "$POSTGRES_USER") PASSWORD $(sql_literal "${POSTGRES_PASSWORD:-}")")
	else
		pwfile=$(mktemp)
		printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
		init_cluster "$PGDATA" "$POSTGRES_USER" "$POSTGRES_HOST_AUTH_METHOD" "$pwfile"
		rm -f "$pwfile"
	fi
	if [ "$POSTGRES_DB" != postgres ]; then
		# FILE_COPY: for a template this small, copying its files beats writing them to WAL.
		sql+=("CREATE DATABASE $(sql_ident "$POSTGRES_DB") STRATEGY = FILE_COPY")
	fi
	if [ "${#sql[@]}" -gt 0 ]; then
		single "${sql[@]}"
	fi

	scripts=(/docker-entrypoint-initdb.d/*)
	if [ -e "${scripts[0]}" ]; then
		# A temporary server for the scripts: unix socket only, fsync=off (the shutdown
		# checkpoint below writes everything; the real server runs with fsync=on).
		pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432 -c fsync=off" -w -t 60 start >/dev/null
		for f in "${scripts[@]}"; do
			# shellcheck disable=SC1090
			case "$f" in
			*.sh) log "running $f"; . "$f" ;;
			*.sql) log "running $f"; psql -X -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --no-password --dbname "$POSTGRES_DB" -f "$f" ;;
			*) log "ignoring $f" ;;
			esac
		done
		pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
	fi
	trap - INT TERM
	: >"$INIT_MARKER"
	log "initialisation complete; ready for start up"
fi

exec postgres -c listen_addresses='*' -p 5432 "$@"
