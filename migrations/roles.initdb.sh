#!/bin/sh
# First boot of compose.yaml's postgres: create the service's two roles with
# migrations/roles.sql (see its header). The postgres image runs every file
# of /docker-entrypoint-initdb.d once, when its data volume is empty, against
# a server on the Unix socket only, as POSTGRES_USER. compose.yaml mounts
# this script there and roles.sql at /opt/service/roles.sql, and sets the
# role names and passwords below in the postgres service's environment.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
  -v database="$POSTGRES_DB" \
  -v owner="$SERVICE_DB_OWNER" -v owner_password="$SERVICE_DB_OWNER_PASSWORD" \
  -v app="$SERVICE_DB_APP" -v app_password="$SERVICE_DB_APP_PASSWORD" \
  -f /opt/service/roles.sql
