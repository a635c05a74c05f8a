-- 01-roles.sql: the local stack's application database: the blue/green role pair, their group and app.users.
--
-- Run once by the postgres image's entrypoint (psql 15, ON_ERROR_STOP) on an empty data directory.
-- The two slot roles get their grants only through the group app_rw, so that "same grants" is one
-- membership that rotor's prepare stage can check. app_blue is the active slot: it can log in with
-- the local development password from APP_BLUE_PASSWORD (the same one store-init writes to the file
-- store); app_green is the standby and stays NOLOGIN until rotor's set-db stage.

\getenv app_blue_password APP_BLUE_PASSWORD
\if :{?app_blue_password}
\else
  -- Fails the init (ON_ERROR_STOP) rather than leave the active slot without a password.
  DO $$ BEGIN RAISE EXCEPTION 'APP_BLUE_PASSWORD is not set'; END $$;
\endif

CREATE ROLE app_rw NOLOGIN;
CREATE ROLE app_blue LOGIN PASSWORD :'app_blue_password' IN ROLE app_rw;
CREATE ROLE app_green NOLOGIN IN ROLE app_rw;

CREATE SCHEMA app;
CREATE TABLE app.users (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO app.users (name) VALUES ('ada'), ('grace'), ('linus');

GRANT USAGE ON SCHEMA app TO app_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON app.users TO app_rw;
GRANT USAGE ON SEQUENCE app.users_id_seq TO app_rw;
