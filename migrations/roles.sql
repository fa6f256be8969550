-- The two roles a service's database needs, least privilege for each:
--
--   owner  owns the database and its public schema. `manage sync` and
--          `manage pending` connect as it (DB_OWNER_USER / DB_OWNER_PASS):
--          they create tables and scratch databases, so it has CREATEDB.
--   app    what the running service connects as (DB_USER / DB_PASS): it
--          reads and writes rows of every table the owner creates, now and
--          later, and can change no schema.
--
-- Run it once per database, as a superuser (or a role with CREATEROLE that
-- owns the database), with psql; it can be run again safely:
--
--   psql -v ON_ERROR_STOP=1 -d postgres \
--        -v database=service \
--        -v owner=service_owner -v owner_password="$OWNER_PASS" \
--        -v app=service_app -v app_password="$APP_PASS" \
--        -f migrations/roles.sql
--
-- compose.yaml runs it when the postgres container first starts; the e2e
-- tests run it with throwaway role names, so the service is tested with
-- exactly these grants.
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'owner', :'owner_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'app', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app') \gexec
-- A second run with other passwords sets them.
ALTER ROLE :"owner" LOGIN CREATEDB PASSWORD :'owner_password';
ALTER ROLE :"app" LOGIN NOCREATEDB NOCREATEROLE PASSWORD :'app_password';

ALTER DATABASE :"database" OWNER TO :"owner";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"app";

\connect :"database"
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app";

-- Tables and sequences that exist already...
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app";
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO :"app";
-- ...and those the owner creates later (every manage sync).
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO :"app";
