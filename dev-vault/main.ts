/**
 * `npm run dev-vault -- [--port 8200] [--host 127.0.0.1] [--root-token root] [--flavor vault-1.17]`:
 * runs the dev Vault alone, like `vault server -dev`, until Ctrl-C. Everything else is configured
 * through its HTTP API, as on a real Vault (e.g. with dev-vault/setup-database.ts).
 * DEV_VAULT_FLAVOR sets the flavor when --flavor is not given. --default-lease-ttl and
 * --max-lease-ttl are the server config's default_lease_ttl and max_lease_ttl (768h each by default);
 * --require-request-header answers like a Vault Agent listener with require_request_header;
 * --tls-cert-file and --tls-key-file (PEM) serve https, as a listener's tls_cert_file/tls_key_file.
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { DevVault } from './dev-vault-server.js'
import { DEFAULT_FLAVOR, FLAVOR_NAMES, isFlavorName } from './flavor.js'
import { parseDurationSeconds } from './ttl.js'

function usage(problem: string): never {
  process.stderr.write(
    `dev-vault: ${problem}\nusage: npm run dev-vault -- [--port N] [--host ADDR] [--root-token TOKEN] [--flavor ${FLAVOR_NAMES.join('|')}]\n` +
      `       [--default-lease-ttl 768h] [--max-lease-ttl 768h] [--require-request-header]\n` +
      `       [--tls-cert-file server.crt --tls-key-file server.key]\n`,
  )
  process.exit(1)
}

let values: {
  port?: string
  host?: string
  'root-token'?: string
  flavor?: string
  'default-lease-ttl'?: string
  'max-lease-ttl'?: string
  'require-request-header'?: boolean
  'tls-cert-file'?: string
  'tls-key-file'?: string
  help?: boolean
}
try {
  ;({ values } = parseArgs({
    options: {
      port: { type: 'string', default: '8200' },
      host: { type: 'string', default: '127.0.0.1' },
      'root-token': { type: 'string', default: 'root' },
      flavor: { type: 'string', default: process.env.DEV_VAULT_FLAVOR || DEFAULT_FLAVOR },
      'default-lease-ttl': { type: 'string', default: '768h' },
      'max-lease-ttl': { type: 'string', default: '768h' },
      'require-request-header': { type: 'boolean', default: false },
      'tls-cert-file': { type: 'string' },
      'tls-key-file': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  }))
} catch (err) {
  usage((err as Error).message)
}
if (values.help) usage('runs a Vault-API-compatible dev server (see docs/dev-vault.md)')
const port = Number(values.port)
if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`--port must be a port number, not ${values.port}`)
const flavor = values.flavor ?? DEFAULT_FLAVOR
if (!isFlavorName(flavor)) usage(`--flavor must be one of ${FLAVOR_NAMES.join(', ')}, not ${flavor}`)
function durationFlag(name: 'default-lease-ttl' | 'max-lease-ttl'): number {
  const seconds = parseDurationSeconds(values[name])
  if (seconds === undefined || seconds <= 0)
    usage(`--${name} must be a duration such as 768h or 3600, not ${values[name]}`)
  return seconds
}
const defaultLeaseTtlSeconds = durationFlag('default-lease-ttl')
const maxLeaseTtlSeconds = durationFlag('max-lease-ttl')
if (defaultLeaseTtlSeconds > maxLeaseTtlSeconds) usage('--default-lease-ttl cannot be greater than --max-lease-ttl')

function readTls(): { cert: string; key: string } | undefined {
  const certFile = values['tls-cert-file']
  const keyFile = values['tls-key-file']
  if (certFile === undefined && keyFile === undefined) return undefined
  if (certFile === undefined || keyFile === undefined) usage('--tls-cert-file and --tls-key-file go together')
  try {
    return { cert: readFileSync(certFile, 'utf8'), key: readFileSync(keyFile, 'utf8') }
  } catch (err) {
    usage(`cannot read the TLS certificate or key: ${(err as Error).message}`)
  }
}

const vault = new DevVault({
  tls: readTls(),
  flavor,
  defaultLeaseTtlSeconds,
  maxLeaseTtlSeconds,
  requireRequestHeader: values['require-request-header'],
  host: values.host,
  rootToken: values['root-token'],
  log: (line) => process.stderr.write(`dev-vault: ${line}\n`),
})
try {
  await vault.start(port)
} catch (err) {
  process.stderr.write(`dev-vault: cannot listen on ${values.host}:${port}: ${(err as Error).message}\n`)
  process.exit(1)
}
process.stdout.write(
  `Dev Vault (a Vault API emulator for tests and demos; in-memory, nothing persists)\n` +
    `Flavor: ${vault.flavor}\n` +
    `Api Address: ${vault.address}\n` +
    `Root Token: ${vault.rootToken}\n\n` +
    `    export VAULT_ADDR='${vault.address}'\n` +
    `    export VAULT_TOKEN='${vault.rootToken}'\n\n`,
)

const exitCodes = { SIGINT: 130, SIGTERM: 143 } as const
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    void vault.stop().finally(() => process.exit(exitCodes[signal]))
  })
}
