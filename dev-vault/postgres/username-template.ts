/**
 * Username templates (sdk/helper/template): the subset of Go's text/template that Vault's
 * templates use — actions `{{ … }}` holding pipelines of function calls, `.Field` references,
 * string and number literals and parenthesised sub-pipelines — with Vault's template functions.
 */
import { createHash, randomUUID } from 'node:crypto'
import { randomBase62 } from '../ids.js'

/** The PostgreSQL plugin's default (postgresql.go defaultUserNameTemplate). */
export const DEFAULT_USERNAME_TEMPLATE =
  '{{ printf "v-%s-%s-%s-%s" (.DisplayName | truncate 8) (.RoleName | truncate 8) (random 20) (unix_time) | truncate 63 }}'

export interface UsernameMetadata {
  DisplayName: string
  RoleName: string
}

type Value = string | number
type Term =
  | { kind: 'field'; name: string }
  | { kind: 'literal'; value: Value }
  | { kind: 'ident'; name: string }
  | { kind: 'pipeline'; commands: Term[][] }
type Node = { kind: 'text'; text: string } | { kind: 'action'; commands: Term[][] }

export class UsernameTemplate {
  private readonly nodes: Node[]

  /** Parses the template; throws with the reason when it is not valid. */
  constructor(
    source: string,
    private readonly now: () => number = Date.now,
  ) {
    this.nodes = parseTemplate(source)
  }

  generate(metadata: UsernameMetadata): string {
    return this.nodes
      .map((node) => (node.kind === 'text' ? node.text : String(this.pipeline(node.commands, metadata))))
      .join('')
  }

  private pipeline(commands: Term[][], data: UsernameMetadata): Value {
    let piped: Value | undefined
    for (const command of commands) piped = this.command(command, data, piped)
    return piped ?? ''
  }

  private command(terms: Term[], data: UsernameMetadata, piped: Value | undefined): Value {
    const [head, ...rest] = terms
    if (head === undefined) throw new Error('missing value for command')
    if (head.kind !== 'ident') {
      if (rest.length > 0 || piped !== undefined) throw new Error("can't give argument to non-function")
      return this.term(head, data)
    }
    const args = rest.map((t) => this.term(t, data))
    if (piped !== undefined) args.push(piped)
    return this.call(head.name, args)
  }

  private term(term: Term, data: UsernameMetadata): Value {
    switch (term.kind) {
      case 'literal':
        return term.value
      case 'field': {
        if (!(term.name in data)) throw new Error(`can't evaluate field ${term.name}`)
        return data[term.name as keyof UsernameMetadata]
      }
      case 'pipeline':
        return this.pipeline(term.commands, data)
      case 'ident':
        return this.call(term.name, [])
    }
  }

  private call(name: string, args: Value[]): Value {
    const str = (i: number) => String(args[i] ?? '')
    const int = (i: number) => {
      const v = args[i]
      if (typeof v !== 'number') throw new Error(`${name}: expected an integer argument`)
      return v
    }
    switch (name) {
      case 'printf':
        return goSprintf(str(0), args.slice(1))
      case 'truncate': {
        const max = int(0)
        if (max <= 0) throw new Error('max length must be > 0')
        return utf8Slice(str(1), max)
      }
      case 'truncate_sha256': {
        const max = int(0)
        if (max <= 8) throw new Error('max length must be > 8')
        const s = str(1)
        if (Buffer.byteLength(s) <= max) return s
        const cut = utf8Slice(s, max - 8)
        return cut + sha256Hex(s.slice(cut.length)).slice(0, 8)
      }
      case 'uppercase':
        return str(0).toUpperCase()
      case 'lowercase':
        return str(0).toLowerCase()
      case 'replace':
        return str(2).replaceAll(str(0), str(1))
      case 'sha256':
        return sha256Hex(str(0))
      case 'base64':
        return Buffer.from(str(0)).toString('base64')
      case 'random': {
        const n = int(0)
        if (n < 1) throw new Error('length must be >= 1')
        return randomBase62(n)
      }
      case 'unix_time':
        return String(Math.floor(this.now() / 1000))
      case 'unix_time_millis':
        return String(this.now())
      case 'timestamp':
        return formatGoTime(this.now(), str(0))
      case 'uuid':
        return randomUUID()
      default:
        throw new Error(`function "${name}" not defined`)
    }
  }
}

function sha256Hex(s: string): string {
  return createHash('sha256').update(s).digest('hex')
}

/** Go slices strings by byte; keep to whole characters for the ASCII names this produces. */
function utf8Slice(s: string, maxBytes: number): string {
  const bytes = Buffer.from(s)
  return bytes.length <= maxBytes ? s : bytes.subarray(0, maxBytes).toString('utf8')
}

/** fmt.Sprintf for %s, %d, %v, %q and %%. */
function goSprintf(format: string, args: Value[]): string {
  let i = 0
  return format.replace(/%([sdvq%])/g, (_, verb: string) => {
    if (verb === '%') return '%'
    const arg = args[i++]
    if (arg === undefined) return `%!${verb}(MISSING)`
    return verb === 'q' ? JSON.stringify(String(arg)) : String(arg)
  })
}

/** time.Format for the common layout elements (2006 01 02 15 04 05 Jan Mon MST -0700 Z07:00). */
function formatGoTime(ms: number, layout: string): string {
  const d = new Date(ms)
  const pad = (n: number, w = 2) => String(n).padStart(w, '0')
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']
  const days = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat']
  const parts: Record<string, string> = {
    '2006': String(d.getUTCFullYear()),
    '01': pad(d.getUTCMonth() + 1),
    '02': pad(d.getUTCDate()),
    '15': pad(d.getUTCHours()),
    '04': pad(d.getUTCMinutes()),
    '05': pad(d.getUTCSeconds()),
    Jan: months[d.getUTCMonth()]!,
    Mon: days[d.getUTCDay()]!,
    MST: 'UTC',
    '-0700': '+0000',
    'Z07:00': 'Z',
  }
  return layout.replace(/2006|Z07:00|-0700|01|02|15|04|05|Jan|Mon|MST/g, (token) => parts[token] ?? token)
}

// ---------------------------------------------------------------------------
// Parsing

function parseTemplate(source: string): Node[] {
  const nodes: Node[] = []
  let rest = source
  while (rest.length > 0) {
    const open = rest.indexOf('{{')
    if (open === -1) {
      nodes.push({ kind: 'text', text: rest })
      break
    }
    let text = rest.slice(0, open)
    let body = rest.slice(open + 2)
    const close = body.indexOf('}}')
    if (close === -1) throw new Error('unclosed action')
    let action = body.slice(0, close)
    body = body.slice(close + 2)
    // {{- and -}} trim the whitespace next to the action.
    if (action.startsWith('- ')) {
      text = text.trimEnd()
      action = action.slice(1)
    }
    if (action.endsWith(' -')) {
      action = action.slice(0, -1)
      body = body.trimStart()
    }
    if (text !== '') nodes.push({ kind: 'text', text })
    nodes.push({ kind: 'action', commands: parsePipeline(tokenizeAction(action), 0, false).commands })
    rest = body
  }
  return nodes
}

function tokenizeAction(action: string): string[] {
  const tokens: string[] = []
  const pattern = /\s+|("(?:[^"\\]|\\.)*"|`[^`]*`|[|()]|[^\s|()]+)/y
  for (let m = pattern.exec(action); m !== null && m.index < action.length; m = pattern.exec(action)) {
    if (m[1] !== undefined) tokens.push(m[1])
  }
  return tokens
}

function parsePipeline(tokens: string[], start: number, inParens: boolean): { commands: Term[][]; end: number } {
  const commands: Term[][] = [[]]
  let i = start
  while (i < tokens.length) {
    const token = tokens[i]!
    if (token === ')') {
      if (!inParens) throw new Error('unexpected ")"')
      return { commands, end: i + 1 }
    }
    if (token === '|') {
      commands.push([])
      i++
      continue
    }
    const current = commands[commands.length - 1]!
    if (token === '(') {
      const inner = parsePipeline(tokens, i + 1, true)
      current.push({ kind: 'pipeline', commands: inner.commands })
      i = inner.end
      continue
    }
    current.push(parseTerm(token))
    i++
  }
  if (inParens) throw new Error('unclosed left paren')
  if (commands.some((c) => c.length === 0)) throw new Error('missing value for command')
  return { commands, end: i }
}

function parseTerm(token: string): Term {
  if (token.startsWith('"')) return { kind: 'literal', value: JSON.parse(token) as string }
  if (token.startsWith('`')) return { kind: 'literal', value: token.slice(1, -1) }
  if (/^-?\d+$/.test(token)) return { kind: 'literal', value: Number(token) }
  if (token.startsWith('.')) return { kind: 'field', name: token.slice(1) }
  if (/^[A-Z_]\w*$/i.test(token)) return { kind: 'ident', name: token }
  throw new Error(`unexpected "${token}" in command`)
}
