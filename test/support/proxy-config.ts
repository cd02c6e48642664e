import type { PgCluster } from './pg-cluster.js'

/**
 * The YAML lines that point a proxy run from the CLI at the test cluster without TLS, logging in
 * as the SCRAM user whose password is in `passwordFile`. Callers add listen, owner_role, etc.
 */
export function clusterUpstreamYaml(cluster: PgCluster, passwordFile: string): string[] {
  return [
    'upstream:',
    `  host: ${cluster.host}`,
    `  port: ${cluster.port}`,
    '  sslmode: disable',
    'credentials:',
    '  static:',
    `    username: ${cluster.users.scram.user}`,
    `    password_file: ${passwordFile}`,
  ]
}
