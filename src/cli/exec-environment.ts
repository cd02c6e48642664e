/** Where the command that `exec` runs should connect: the private proxy. */
export interface ExecTarget {
  port: number
  database: string
}

/** The user name the command sends; the proxy ignores it (the login is the proxy's credential). */
export const EXEC_USER = 'pg-vault-proxy'

/**
 * Inherited variables the command must not see. PGVP_* and VAULT_* hold the proxy's own secrets
 * (a static password, a Vault token or secret_id). PGPASSWORD, PGPASSFILE and PGSERVICEFILE would
 * hand it passwords meant for other servers. PGHOSTADDR and PGSERVICE would send it elsewhere:
 * libpq dials hostaddr instead of resolving host, and takes a service's settings before the
 * environment's (conninfo_add_defaults in PostgreSQL's src/interfaces/libpq/fe-connect.c).
 */
const WITHHELD = /^(?:PGVP_|VAULT_)|^(?:PGPASSWORD|PGPASSFILE|PGSERVICEFILE|PGSERVICE|PGHOSTADDR)$/

/**
 * The environment of the command `exec` runs: the inherited one without the proxy's secrets or
 * anything that would steer libpq away, plus libpq's variables and DATABASE_URL pointing at the
 * private proxy (plain TCP on loopback: no TLS to negotiate with a local proxy that offers none).
 */
export function execEnvironment(inherited: NodeJS.ProcessEnv, target: ExecTarget): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(inherited))
    if (value !== undefined && !WITHHELD.test(name.toUpperCase())) env[name] = value
  const host = '127.0.0.1'
  return {
    ...env,
    PGHOST: host,
    PGPORT: String(target.port),
    PGDATABASE: target.database,
    PGUSER: EXEC_USER,
    PGSSLMODE: 'disable',
    DATABASE_URL: `postgresql://${EXEC_USER}@${host}:${target.port}/${encodeURIComponent(target.database)}?sslmode=disable`,
  }
}
