#!/bin/bash
# Entrypoint of the postgres stand-in image (see postgres.Dockerfile): on the
# first start of an empty PGDATA it creates the cluster with POSTGRES_USER as
# superuser (password POSTGRES_PASSWORD, asked of every TCP client), creates
# POSTGRES_DB and runs /docker-entrypoint-initdb.d/* in name order (*.sh run,
# or sourced when not executable; *.sql through psql) against a server that
# listens on its Unix socket only, as the official image does. Then it runs
# the server in the foreground as the postgres user.
set -Eeuo pipefail

if [ "${1:-}" != postgres ]; then
  exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo >&2 "postgres: POSTGRES_PASSWORD is not set; set it (the official image refuses to start without it too)"
    exit 1
  fi
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  printf 'listen_addresses = %s\n' "'*'" >>"$PGDATA/postgresql.conf"
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"

  # The first-boot server: Unix socket only, so no health check passes and
  # no client connects before the init scripts are done.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER")
  if [ "$POSTGRES_DB" != postgres ]; then
    "${psql[@]}" --dbname postgres -q --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    [ -e "$f" ] || continue
    case "$f" in
      *.sh)
        echo "postgres: running $f"
        if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
      *.sql)
        echo "postgres: running $f"
        "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
      *) echo "postgres: ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "postgres: init process complete; ready for start up"
fi

exec "$@"
