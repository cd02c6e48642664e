/**
 * ACL policies: the HCL (or JSON) policy language's `path` blocks, a store with Vault's built-in
 * `root` and `default` policies, and path matching with Vault's rules (vault/policy/acl.go):
 * an exact path beats a glob; among globs and `+` segment wildcards the most specific wins; a
 * `deny` capability beats everything. Parameter constraints (allowed_parameters, …) are parsed
 * and ignored.
 */
import { respondError } from './envelope.js'

export const CAPABILITIES = ['create', 'read', 'update', 'patch', 'delete', 'list', 'sudo', 'deny'] as const
export type Capability = (typeof CAPABILITIES)[number]

/** The legacy `policy = "…"` shorthand. */
const LEGACY_POLICY: Record<string, Capability[]> = {
  deny: ['deny'],
  read: ['read', 'list'],
  write: ['create', 'read', 'update', 'delete', 'list'],
  sudo: ['create', 'read', 'update', 'delete', 'list', 'sudo'],
}

export interface PathRule {
  path: string
  capabilities: ReadonlySet<Capability>
}

export interface Policy {
  name: string
  /** The text as written, returned by reads. */
  raw: string
  rules: PathRule[]
}

// ---------------------------------------------------------------------------
// Parsing

/** Parses a policy document; throws a 400 "failed to parse policy: …" when it is not valid. */
export function parsePolicy(name: string, raw: string): Policy {
  try {
    const document = raw.trim().startsWith('{') ? (JSON.parse(raw) as unknown) : parseHcl(raw)
    return { name, raw, rules: pathRules(document) }
  } catch (err) {
    throw respondError(`failed to parse policy: ${(err as Error).message}`)
  }
}

function pathRules(document: unknown): PathRule[] {
  const paths = (document as { path?: unknown }).path
  if (paths === undefined) return []
  // HCL gives a list of labelled blocks; JSON gives an object keyed by path.
  const entries: [string, unknown][] = Array.isArray(paths)
    ? (paths as [string, unknown][])
    : Object.entries(paths as Record<string, unknown>)
  return entries.map(([path, block]) => ({ path: path.replace(/^\//, ''), capabilities: capabilitiesOf(path, block) }))
}

function capabilitiesOf(path: string, block: unknown): Set<Capability> {
  const { capabilities, policy } = (block ?? {}) as { capabilities?: unknown; policy?: unknown }
  const caps = new Set<Capability>()
  if (typeof policy === 'string') {
    const legacy = LEGACY_POLICY[policy.toLowerCase()]
    if (!legacy) throw new Error(`path ${JSON.stringify(path)}: invalid policy ${JSON.stringify(policy)}`)
    legacy.forEach((c) => caps.add(c))
  }
  if (capabilities !== undefined) {
    if (!Array.isArray(capabilities)) throw new Error(`path ${JSON.stringify(path)}: capabilities must be a list`)
    for (const cap of capabilities) {
      if (!(CAPABILITIES as readonly unknown[]).includes(cap)) {
        throw new Error(`path ${JSON.stringify(path)}: invalid capability ${JSON.stringify(cap)}`)
      }
      caps.add(cap as Capability)
    }
  }
  // A deny anywhere means nothing else counts.
  return caps.has('deny') ? new Set(['deny']) : caps
}

type HclValue = string | number | boolean | HclValue[] | HclBody
/** Attributes map to values; labelled blocks (`path "x" { … }`) to a list of [label, body] pairs. */
interface HclBody {
  [key: string]: HclValue | [string, HclBody][]
}

/** Just enough HCL for policies: attributes, labelled blocks, strings, numbers, lists, comments. */
function parseHcl(text: string): HclBody {
  const tokens = tokenize(text)
  let pos = 0
  const peek = () => tokens[pos]
  const next = () => {
    const token = tokens[pos++]
    if (token === undefined) throw new Error('unexpected end of policy')
    return token
  }
  const expect = (text: string) => {
    const token = next()
    if (token.text !== text) throw new Error(`line ${token.line}: expected ${text}, got ${token.text}`)
  }

  const body = (closing?: string): HclBody => {
    const out: HclBody = {}
    for (;;) {
      const token = peek()
      if (token === undefined) {
        if (closing) throw new Error(`unexpected end of policy, expected ${closing}`)
        return out
      }
      if (token.text === closing) {
        pos++
        return out
      }
      const key = next()
      if (key.kind !== 'ident' && key.kind !== 'string') throw new Error(`line ${key.line}: unexpected ${key.text}`)
      if (peek()?.text === '=') {
        pos++
        out[key.value] = value()
        continue
      }
      const labels: string[] = []
      while (peek()?.kind === 'string') labels.push(next().value)
      expect('{')
      const block = body('}')
      const list = (out[key.value] ??= []) as [string, HclBody][]
      list.push([labels.join('/'), block])
    }
  }

  const value = (): HclValue => {
    const token = next()
    if (token.kind === 'string') return token.value
    if (token.kind === 'number') return Number(token.value)
    if (token.text === 'true' || token.text === 'false') return token.text === 'true'
    if (token.text === '{') return body('}')
    if (token.text === '[') {
      const items: HclValue[] = []
      for (;;) {
        if (peek()?.text === ']') {
          pos++
          return items
        }
        items.push(value())
        if (peek()?.text === ',') pos++
      }
    }
    throw new Error(`line ${token.line}: unexpected ${token.text}`)
  }

  return body()
}

interface Token {
  kind: 'ident' | 'string' | 'number' | 'punct'
  text: string
  value: string
  line: number
}

function tokenize(text: string): Token[] {
  const tokens: Token[] = []
  const pattern =
    /(\s+)|(#[^\n]*|\/\/[^\n]*|\/\*[\s\S]*?\*\/)|("(?:[^"\\\n]|\\.)*")|(-?\d+(?:\.\d+)?)|([A-Z_][\w.-]*)|([{}[\]=,])|(.)/iy
  let line = 1
  for (let m = pattern.exec(text); m !== null && m.index < text.length; m = pattern.exec(text)) {
    const [whole, space, comment, str, num, ident, punct, bad] = m
    if (bad !== undefined) throw new Error(`line ${line}: unexpected character ${JSON.stringify(bad)}`)
    if (str !== undefined) tokens.push({ kind: 'string', text: str, value: JSON.parse(str) as string, line })
    else if (num !== undefined) tokens.push({ kind: 'number', text: num, value: num, line })
    else if (ident !== undefined) tokens.push({ kind: 'ident', text: ident, value: ident, line })
    else if (punct !== undefined) tokens.push({ kind: 'punct', text: punct, value: punct, line })
    else if (space === undefined && comment === undefined) break
    line += whole.split('\n').length - 1
  }
  return tokens
}

// ---------------------------------------------------------------------------
// The store

/** Vault's built-in `default` policy, as a dev server has it (paths the dev Vault lacks just never match). */
export const DEFAULT_POLICY = `# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own entity by id or name
path "identity/entity/id/{{identity.entity.id}}" {
  capabilities = ["read"]
}
path "identity/entity/name/{{identity.entity.name}}" {
  capabilities = ["read"]
}

# Allow a token to look up its resultant ACL from all policies. This is useful
# for UIs. It is an internal path because the format may change at any time
# based on how the internal ACL features and capabilities change.
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}

# Allow a token to renew a lease via lease_id in the request body; old path for
# old clients, new path for newer
path "sys/renew" {
    capabilities = ["update"]
}
path "sys/leases/renew" {
    capabilities = ["update"]
}

# Allow looking up lease properties. This requires knowing the lease ID ahead
# of time and does not divulge any sensitive information.
path "sys/leases/lookup" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow a token to wrap arbitrary values in a response-wrapping token
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}

# Allow a token to look up the creation time and TTL of a given
# response-wrapping token
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}

# Allow a token to unwrap a response-wrapping token.
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}

# Allow general purpose tools
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}

# Allow checking the status of a Control Group request if the user has the
# accessor
path "sys/control-group/request" {
    capabilities = ["update"]
}

# Allow a token to make requests to the Authorization Endpoint for OIDC providers.
path "identity/oidc/provider/+/authorize" {
    capabilities = ["read", "update"]
}
`

export class PolicyStore {
  private readonly policies = new Map<string, Policy>([
    ['root', { name: 'root', raw: '', rules: [] }],
    ['default', parsePolicy('default', DEFAULT_POLICY)],
  ])

  get(name: string): Policy | undefined {
    return this.policies.get(name.toLowerCase())
  }

  /** Names, sorted, as sys/policies/acl lists them. */
  names(): string[] {
    return [...this.policies.keys()].sort()
  }

  set(name: string, raw: string): void {
    const key = name.toLowerCase()
    if (key === 'root') throw respondError('cannot update "root" policy')
    this.policies.set(key, parsePolicy(key, raw))
  }

  delete(name: string): void {
    const key = name.toLowerCase()
    if (key === 'root') throw respondError('cannot delete "root" policy')
    if (key === 'default') throw respondError('cannot delete default policy')
    this.policies.delete(key)
  }

  /** The ACL of a token with these policies; names without a policy grant nothing. */
  acl(names: readonly string[]): Acl {
    if (names.includes('root')) return Acl.root()
    return Acl.of(names.flatMap((n) => this.get(n) ?? []))
  }
}

// ---------------------------------------------------------------------------
// Matching

export class Acl {
  private readonly exact = new Map<string, Set<Capability>>()
  /** Globs ending in `*` (stored without it) that contain no `+`. */
  private readonly prefixes = new Map<string, Set<Capability>>()
  /** Paths with `+` segments, possibly also ending in `*`. */
  private readonly segmentWildcards = new Map<string, Set<Capability>>()

  private constructor(
    policies: readonly Policy[],
    readonly isRoot = false,
  ) {
    for (const rule of policies.flatMap((p) => p.rules)) {
      const table = rule.path.includes('+')
        ? this.segmentWildcards
        : rule.path.endsWith('*')
          ? this.prefixes
          : this.exact
      const key = table === this.prefixes ? rule.path.slice(0, -1) : rule.path
      // The same path in several policies: capabilities add up, and deny wins.
      const merged = new Set([...(table.get(key) ?? []), ...rule.capabilities])
      table.set(key, merged.has('deny') ? new Set(['deny']) : merged)
    }
  }

  static of(policies: readonly Policy[]): Acl {
    return new Acl(policies)
  }

  static root(): Acl {
    return new Acl([], true)
  }

  /** Whether `capability` (and `sudo`, when the path needs it) is granted on `path`. */
  allows(path: string, capability: Capability, needsSudo = false): boolean {
    if (this.isRoot) return true
    const caps = this.capabilities(path, capability === 'list')
    if (caps === undefined || caps.has('deny')) return false
    return caps.has(capability) && (!needsSudo || caps.has('sudo'))
  }

  /** The capabilities of the most specific rule matching `path`, or undefined. */
  capabilities(path: string, isList = false): ReadonlySet<Capability> | undefined {
    const exact = this.exact.get(path) ?? (isList ? this.exact.get(path.replace(/\/$/, '')) : undefined)
    if (exact) return exact
    return this.bestWildcardMatch(path)
  }

  private bestWildcardMatch(path: string): ReadonlySet<Capability> | undefined {
    const candidates: {
      firstWildcard: number
      isPrefix: boolean
      wildcards: number
      pattern: string
      caps: Set<Capability>
    }[] = []

    let longest: string | undefined
    for (const prefix of this.prefixes.keys()) {
      if (path.startsWith(prefix) && (longest === undefined || prefix.length > longest.length)) longest = prefix
    }
    if (longest !== undefined) {
      const caps = this.prefixes.get(longest)!
      if (this.segmentWildcards.size === 0) return caps
      candidates.push({ firstWildcard: longest.length, isPrefix: true, wildcards: 0, pattern: longest, caps })
    }

    const parts = path.split('/')
    for (const [full, caps] of this.segmentWildcards) {
      const isPrefix = full.endsWith('*')
      const pattern = isPrefix ? full.slice(0, -1) : full
      const patternParts = pattern.split('/')
      if (parts.length < patternParts.length) continue
      if (!isPrefix && parts.length !== patternParts.length) continue
      let wildcards = 0
      const matches = patternParts.every((p, i) => {
        const part = parts[i]!
        if (p === '+') {
          wildcards++
          return true
        }
        if (p === part) return true
        return isPrefix && i === patternParts.length - 1 && part.startsWith(p)
      })
      if (matches) candidates.push({ firstWildcard: full.indexOf('+'), isPrefix, wildcards, pattern, caps })
    }
    if (candidates.length === 0) return undefined

    // Highest priority last, as in acl.go: a later first wildcard, not a prefix, fewer `+`,
    // a longer pattern, then the lexically greater one.
    candidates.sort(
      (a, b) =>
        a.firstWildcard - b.firstWildcard ||
        Number(b.isPrefix) - Number(a.isPrefix) ||
        b.wildcards - a.wildcards ||
        a.pattern.length - b.pattern.length ||
        (a.pattern < b.pattern ? -1 : a.pattern > b.pattern ? 1 : 0),
    )
    return candidates[candidates.length - 1]!.caps
  }
}
