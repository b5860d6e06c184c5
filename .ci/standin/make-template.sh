#!/bin/bash
# Run once at image build (a RUN step of .ci/testenv.sh's stand-in layer): an initialised data
# directory that docker-entrypoint.sh copies instead of running initdb on every first start.
# initdb is most of a stand-in container's start (about 1 CPU-s of ~2.4 on the test machines),
# and the tests start a few hundred containers. Its bootstrap superuser (OID 10) is renamed to
# POSTGRES_USER at start by a second superuser, standin_init, which is then dropped: a role
# cannot rename itself.
set -Eeuo pipefail
export PATH=/usr/lib/postgresql/15/bin:$PATH
TEMPLATE=/var/lib/postgraas-standin/template
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$(dirname "$TEMPLATE")"
	chown postgres:postgres "$(dirname "$TEMPLATE")"
	exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}"
fi
sock=$(mktemp -d)
initdb -D "$TEMPLATE" --username=standin_bootstrap --encoding=UTF8 --locale=C.UTF-8 \
	--auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
printf '\nhost all all all scram-sha-256\n' >>"$TEMPLATE/pg_hba.conf"
pg_ctl -D "$TEMPLATE" -o "-c listen_addresses='' -k $sock -c fsync=off" -w -t 60 start >/dev/null
psql -X -v ON_ERROR_STOP=1 -q -h "$sock" -U standin_bootstrap -d postgres -c 'CREATE ROLE standin_init SUPERUSER LOGIN'
pg_ctl -D "$TEMPLATE" -m fast -w stop >/dev/null
rm -rf "$sock"
