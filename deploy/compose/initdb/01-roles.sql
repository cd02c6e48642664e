-- Run once by the postgres image on its first start (/docker-entrypoint-initdb.d), as the superuser.
-- The roles of docs/vault.md, section 1 ("PostgreSQL, once, as a superuser"). Passwords here are
-- for the local compose stack only.

-- Owns the database and everything sessions create; every proxied session acts as it.
CREATE ROLE app_owner NOLOGIN;

-- Vault's management login: creates and drops the short-lived users, rotates app_static.
CREATE ROLE vault_admin LOGIN CREATEROLE PASSWORD 'vault_admin_pw';
GRANT app_owner TO vault_admin WITH ADMIN OPTION;   -- PG16+: needed to GRANT app_owner to new users
GRANT pg_signal_backend TO vault_admin;             -- revocation ends a user's sessions

-- The static role's login; Vault replaces this password when the static role is created.
CREATE ROLE app_static LOGIN PASSWORD 'initial' IN ROLE app_owner;
GRANT app_static TO vault_admin WITH ADMIN OPTION;  -- PG16+: rotating its password needs ADMIN on it

-- PostgreSQL 15+ gives CREATE on schema public to the database owner only: app_owner.
CREATE DATABASE appdb OWNER app_owner;
