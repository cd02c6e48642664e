import type { StartupParameter } from '../pgwire/startup-packet.js'
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
 * aside, `role` and `session_authorization` are the proxy's to set (directly or inside `options`),
 * `_pq_.*` never goes upstream, replication is refused, and everything else is forwarded as is
 * so the upstream validates it exactly as a direct connection would.
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
    else if (name === 'options') {
      const kept = filterOptions(value, result.stripped)
      if (kept !== '') result.forwarded.push([name, kept])
    } else result.forwarded.push([name, value])
  }
  return result
}

/** Same meanings as PostgreSQL's boolean parsing for `replication`, where false means a normal session. */
function isFalse(value: string): boolean {
  return ['false', 'off', 'no', '0', 'f', 'n'].includes(value.trim().toLowerCase())
}

/**
 * Removes `-c role=…`, `-crole=…`, `--role=…` (and session_authorization) from an `options`
 * string. Splitting follows PostgreSQL's pg_split_opts: whitespace separates, a backslash escapes
 * the next character. Kept switches are re-escaped the same way.
 */
export function filterOptions(options: string, stripped: string[]): string {
  const words = splitOptions(options)
  const kept: string[] = []
  for (let i = 0; i < words.length; i++) {
    const word = words[i] as string
    let assignment: string | undefined
    let consumed = [word]
    if (word === '-c' && i + 1 < words.length) {
      assignment = words[i + 1]
      consumed = [word, assignment as string]
      i++
    } else if (word.startsWith('-c')) assignment = word.slice(2)
    else if (word.startsWith('--')) assignment = word.slice(2)
    const name = assignment?.split('=', 1)[0]
    if (name !== undefined && PROXY_OWNED.has(normalise(name))) {
      stripped.push(`options:${normalise(name)}`)
      continue
    }
    kept.push(...consumed)
  }
  return kept.map(escapeOption).join(' ')
}

export function splitOptions(options: string): string[] {
  const words: string[] = []
  let current = ''
  let inWord = false
  for (let i = 0; i < options.length; i++) {
    const ch = options[i] as string
    if (ch === '\\' && i + 1 < options.length) {
      current += options[++i]
      inWord = true
    } else if (/\s/.test(ch)) {
      if (inWord) words.push(current)
      current = ''
      inWord = false
    } else {
      current += ch
      inWord = true
    }
  }
  if (inWord) words.push(current)
  return words
}

function escapeOption(word: string): string {
  return word.replace(/[\s\\]/g, (ch) => `\\${ch}`)
}
