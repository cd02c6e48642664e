import type { VaultAuthSettings } from '../vault/vault-authenticator.js'
import type { VaultClientOptions } from '../vault/vault-client.js'
import { ConfigError } from './config-error.js'
import type { ParsedConfig } from './schema.js'

export interface VaultSettings {
  client: VaultClientOptions
  auth: VaultAuthSettings
}

const SERVICE_ACCOUNT_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token'

/**
 * The Vault connection and login, from the `vault` section with Vault's standard environment
 * variables (VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE, VAULT_CACERT, VAULT_CLIENT_CERT,
 * VAULT_CLIENT_KEY, VAULT_SKIP_VERIFY) filling what the file leaves unset.
 */
export function resolveVaultSettings(
  config: Readonly<ParsedConfig>,
  env: NodeJS.ProcessEnv = process.env,
): VaultSettings {
  const vault = config.vault
  const auth = vault?.auth ?? { method: 'token' as const }
  const address = vault?.address ?? env.VAULT_ADDR
  if (!address) throw new ConfigError(['vault.address: required by the Vault credential source (or set VAULT_ADDR)'])
  const client: VaultClientOptions = {
    address,
    namespace: vault?.namespace ?? (env.VAULT_NAMESPACE || undefined),
    caCert: vault?.ca_cert ?? (env.VAULT_CACERT || undefined),
    clientCert: vault?.client_cert ?? (env.VAULT_CLIENT_CERT || undefined),
    clientKey: vault?.client_key ?? (env.VAULT_CLIENT_KEY || undefined),
    // Unlike node-vault, "false" and "0" mean false.
    skipVerify: vault?.skip_verify || /^(?:1|t|true|yes|on)$/i.test(env.VAULT_SKIP_VERIFY ?? ''),
    timeoutMs: vault?.timeout_ms ?? 10_000,
  }
  switch (auth.method) {
    case 'token': {
      const token = auth.token ?? (auth.token_file ? undefined : env.VAULT_TOKEN)
      if (!token && !auth.token_file)
        throw new ConfigError(['vault.auth.token: set vault.auth.token or vault.auth.token_file (or VAULT_TOKEN)'])
      return { client, auth: { method: 'token', token, tokenFile: auth.token_file } }
    }
    case 'approle':
      return {
        client,
        auth: {
          method: 'approle',
          mount: auth.mount ?? 'approle',
          roleId: auth.role_id ?? '',
          secretId: auth.secret_id,
          secretIdFile: auth.secret_id_file,
        },
      }
    case 'kubernetes':
      return {
        client,
        auth: {
          method: 'kubernetes',
          mount: auth.mount ?? 'kubernetes',
          role: auth.role ?? '',
          jwtFile: auth.jwt_file ?? SERVICE_ACCOUNT_TOKEN,
        },
      }
    case 'jwt':
      return {
        client,
        auth: { method: 'jwt', mount: auth.mount ?? 'jwt', role: auth.role ?? '', jwtFile: auth.jwt_file ?? '' },
      }
  }
}
