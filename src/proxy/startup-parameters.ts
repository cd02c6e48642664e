import type { StartupParameter } from '../pgwire/startup-packet.js'
import { optionSettings, splitOptions, type OptionSetting } from '../pgwire/startup-options.js'
import { ProxyError } from './proxy-error.js'

/** What the client asked for, split into what goes upstream and what the proxy answers itself. */
export interface ClientStartup {
  /** The client's user name: never used upstream (it may pick a route in future). */
  clientUser: string
  /** The database the client asked for, if any. */
  database: string | undefined
  /** Parameters forwarded verbatim, in the client's order. */
  forwarded: StartupParameter[]
  /** `_pq_.*` protocol options we do not support: listed back in NegotiateProtocolVersion. */
  unsupportedProtocolOptions: string[]
  /** Names of parameters the proxy removed (logged at debug, never their values). */
  stripped: string[]
}

// GUC names are case-insensitive, and "-" and "_" are the same in command-line switches.
const normalise = (name: string): string => name.toLowerCase().replaceAll('-', '_')
const PROXY_OWNED = new Set(['role', 'session_authorization'])

/**
 * Applies the proxy's rules to the client's startup parameters: `user` and `database` are taken
 * aside, `role` and `session_authorization` are the proxy's to set (removed as parameters, refused
 * inside `options`), `_pq_.*` never goes upstream, replication is refused, and everything else is
 * forwarded as is so the upstream validates it exactly as a direct connection would.
 */
export function splitClientStartup(parameters: readonly StartupParameter[]): ClientStartup {
  const result: ClientStartup = {
    clientUser: '',
    database: undefined,
    forwarded: [],
    unsupportedProtocolOptions: [],
    stripped: [],
  }
  for (const [name, value] of parameters) {
    const key = normalise(name)
    if (name === 'user') result.clientUser = value
    else if (name === 'database') result.database = value
    else if (name.startsWith('_pq_.')) result.unsupportedProtocolOptions.push(name)
    else if (name === 'replication') {
      if (!isFalse(value)) {
        throw new ProxyError('replication_refused', {
          sqlState: '0A000',
          message: 'pg-vault-proxy does not support replication connections',
          hint: 'Connect replication clients to the PostgreSQL server directly.',
        })
      }
    } else if (PROXY_OWNED.has(key)) result.stripped.push(name)
    else {
      if (name === 'options') checkOptions(value)
      result.forwarded.push([name, value])
    }
  }
  return result
}

/** Same meanings as PostgreSQL's boolean parsing for `replication`, where false means a normal session. */
function isFalse(value: string): boolean {
  return ['false', 'off', 'no', '0', 'f', 'n'].includes(value.trim().toLowerCase())
}

/**
 * Refuses an `options` string that would set a parameter the proxy owns, read as the server reads
 * it (grouped flags such as `-ecrole=x` included). It is checked under both splittings the
 * server's locale allows (see splitOptions), so a non-ASCII space cannot hide a switch.
 */
function checkOptions(options: string): void {
  for (const nonAsciiSeparates of [false, true]) {
    const owned = optionSettings(splitOptions(options, nonAsciiSeparates)).find((s) => PROXY_OWNED.has(s.name))
    if (owned) throw optionsRefused(owned)
  }
}

function optionsRefused({ name, spelling }: OptionSetting): ProxyError {
  // The client's own words, shortened: the packet may hold up to 10000 bytes of them.
  const shown = spelling.length > 80 ? `${spelling.slice(0, 80)}…` : spelling
  return new ProxyError('options_refused', {
    sqlState: '42501',
    message: `pg-vault-proxy refuses the options connection parameter: "${shown}" sets ${name}, which the proxy sets itself (every session acts as its owner role)`,
    hint: `Remove the switch that sets ${name} from options (PGOPTIONS, or options= in the connection string); other switches are passed on.`,
  })
}
