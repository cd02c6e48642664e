import { readFile } from 'node:fs/promises'
import { parse as parseYaml, YAMLError } from 'yaml'
import { z } from 'zod'
import { ConfigError } from './config-error.js'
import { configKeys, type ConfigKey } from './schema-keys.js'
import { configSchema, type ParsedConfig } from './schema.js'
import { resolveVaultSettings } from './vault-settings.js'

/** One route: its own listener, upstream, owner role and credential source, chosen by client user name. */
export interface RouteConfig {
  name: string
  /** Client user names this route serves on its listener; undefined: every user no other route claims. */
  users: readonly string[] | undefined
  /** The whole configuration as this route sees it (globals plus the route's own keys). */
  config: Readonly<ParsedConfig>
}

export type Config = Readonly<ParsedConfig> & { readonly routes: readonly RouteConfig[] }
export { ConfigError }

/** The keys a `routes` entry may set; everything else is global. */
export const ROUTE_KEYS = ['listen', 'socket_dir', 'owner_role', 'upstream', 'credentials'] as const

export const routeEntrySchema = z
  .object({
    name: z.string().regex(/^[\w.-]+$/, 'expected a name of letters, digits, "_", "." or "-"'),
    users: z.array(z.string().min(1)).min(1).optional(),
    listen: z.unknown().optional(),
    socket_dir: z.unknown().optional(),
    owner_role: z.unknown().optional(),
    upstream: z.record(z.string(), z.unknown()).optional(),
    credentials: z.record(z.string(), z.unknown()).optional(),
  })
  .strict()

/** Settings given as command-line flags: they win over everything else. */
export interface ConfigOverrides {
  listen?: string | undefined
  logLevel?: string | undefined
  logFormat?: string | undefined
}

export const CONFIG_KEYS: readonly ConfigKey[] = configKeys(configSchema)

/**
 * One precedence chain — flags > PGVP_* environment > YAML file > defaults — and one validation
 * pass that reports every problem with its key path.
 */
export async function loadConfig(
  file: string | undefined,
  overrides: ConfigOverrides = {},
  env: NodeJS.ProcessEnv = process.env,
): Promise<Config> {
  const fromFile = file === undefined ? {} : await readConfigFile(file)
  const { values: fromEnv, problems } = fromEnvironment(env)
  if (problems.length > 0) throw new ConfigError(problems)
  const fromFlags: Record<string, unknown> = {}
  if (overrides.listen !== undefined) fromFlags.listen = overrides.listen
  if (overrides.logLevel !== undefined || overrides.logFormat !== undefined) {
    fromFlags.log = {
      ...(overrides.logLevel ? { level: overrides.logLevel } : {}),
      ...(overrides.logFormat ? { format: overrides.logFormat } : {}),
    }
  }
  const config = parseConfig(merge(merge(fromFile, fromEnv), fromFlags))
  // Vault settings also come from VAULT_* variables: check them now, not at the first client.
  if (config.credentials.vault || config.credentials.kv) resolveVaultSettings(config, env)
  return config
}

/**
 * Validates a raw configuration. Without `routes`, the top-level keys are the one route, "default".
 * With `routes`, each entry's keys are laid over the top-level ones (upstream key by key) and the
 * result is validated as a whole, problems reported under `routes.N.`.
 */
export function parseConfig(raw: unknown): Config {
  if (!isPlainObject(raw) || raw.routes === undefined) {
    const parsed = parseWhole(raw, '')
    return Object.freeze({ ...parsed, routes: [{ name: 'default', users: undefined, config: parsed }] })
  }
  const { routes: entries, ...base } = raw
  if (!Array.isArray(entries) || entries.length === 0)
    throw new ConfigError(['routes: expected a list of at least one route'])
  const problems: string[] = []
  const routes: RouteConfig[] = []
  entries.forEach((entry: unknown, i) => {
    const shape = routeEntrySchema.safeParse(entry)
    if (!shape.success) {
      problems.push(...shape.error.issues.map((issue) => describeIssue(issue, `routes.${i}.`, true)))
      return
    }
    const e = shape.data
    const merged: Record<string, unknown> = { ...base }
    for (const key of ROUTE_KEYS) if (e[key] !== undefined) merged[key] = e[key]
    if (isPlainObject(base.upstream) && e.upstream) merged.upstream = { ...base.upstream, ...e.upstream }
    try {
      routes.push({ name: e.name, users: e.users, config: parseWhole(merged, `routes.${i}.`) })
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err
      problems.push(...err.problems)
    }
  })
  problems.push(...routeConflicts(routes))
  if (problems.length > 0) throw new ConfigError([...new Set(problems)])
  const first = routes[0] as RouteConfig
  return Object.freeze({ ...first.config, routes })
}

function parseWhole(raw: unknown, routePrefix: string): Readonly<ParsedConfig> {
  const result = configSchema.safeParse(raw)
  if (!result.success) throw new ConfigError(result.error.issues.map((issue) => describeIssue(issue, routePrefix)))
  return Object.freeze(result.data)
}

/** Names are unique; on one listener at most one route takes every user, and no user is claimed twice. */
function routeConflicts(routes: RouteConfig[]): string[] {
  const problems: string[] = []
  const names = new Set<string>()
  const byListener = new Map<string, { catchAll?: string; users: Map<string, string> }>()
  routes.forEach((route, i) => {
    if (names.has(route.name)) problems.push(`routes.${i}.name: "${route.name}" is used by another route`)
    names.add(route.name)
    const { host, port } = route.config.listen
    const key = `${host}:${port}`
    const listener = byListener.get(key) ?? { users: new Map<string, string>() }
    byListener.set(key, listener)
    if (route.users === undefined) {
      if (listener.catchAll)
        problems.push(
          `routes.${i}.users: routes "${listener.catchAll}" and "${route.name}" both take every user on ${key}; give one of them users`,
        )
      listener.catchAll = route.name
    } else {
      for (const user of route.users) {
        const other = listener.users.get(user)
        if (other) problems.push(`routes.${i}.users: "${user}" is already routed to "${other}" on ${key}`)
        listener.users.set(user, route.name)
      }
    }
  })
  return problems
}

async function readConfigFile(file: string): Promise<Record<string, unknown>> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new ConfigError([`cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`])
  }
  let raw: unknown
  try {
    // Warnings would be printed with the offending line (a code frame) to stderr: not wanted.
    raw = parseYaml(text, { logLevel: 'error' }) ?? {}
  } catch (err) {
    throw new ConfigError([describeYamlError(file, err)])
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError([`${file} must hold a YAML mapping of settings`])
  }
  return raw as Record<string, unknown>
}

/**
 * A YAML syntax error as file, line, column and the parser's short reason. Never the text of the
 * line: the parser's own message quotes it (a code frame), and the line may hold an inline secret.
 * What follows a ": " in the reason is cut too, as some reasons end with a quoted token (an alias).
 */
export function describeYamlError(file: string, err: unknown): string {
  const message = err instanceof Error ? err.message : String(err)
  const reason = (message.split('\n', 1)[0] as string)
    .replace(/ at line \d+, column \d+:?$/, '')
    .split(': ', 1)[0] as string
  const where = err instanceof YAMLError && err.linePos ? `:${err.linePos[0].line}:${err.linePos[0].col}` : ''
  const code = err instanceof YAMLError ? ` (${err.code})` : ''
  return `${file}${where} is not valid YAML: ${reason.slice(0, 120)}${code}`
}

/** PGVP_<KEY_PATH> for every key of the schema, typed by the key's kind. */
export function fromEnvironment(env: NodeJS.ProcessEnv): { values: Record<string, unknown>; problems: string[] } {
  const values: Record<string, unknown> = {}
  const problems: string[] = []
  for (const key of CONFIG_KEYS) {
    const text = env[key.env]
    if (text === undefined || text === '') continue
    let value: unknown = text
    if (key.kind === 'number') {
      value = Number(text)
      if (!Number.isFinite(value)) problems.push(`${key.env} (${key.path}): expected a number, got "${text}"`)
    } else if (key.kind === 'boolean') {
      if (/^(?:1|true|yes|on)$/i.test(text)) value = true
      else if (/^(?:0|false|no|off)$/i.test(text)) value = false
      else problems.push(`${key.env} (${key.path}): expected true or false, got "${text}"`)
    }
    setPath(values, key.path, value)
  }
  return { values, problems }
}

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.')
  let node = target
  for (const part of parts.slice(0, -1)) {
    node[part] ??= {}
    node = node[part] as Record<string, unknown>
  }
  node[parts.at(-1) as string] = value
}

function merge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base }
  for (const [key, value] of Object.entries(over)) {
    const existing = out[key]
    out[key] = isPlainObject(existing) && isPlainObject(value) ? merge(existing, value) : value
  }
  return out
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function describeIssue(issue: z.core.$ZodIssue, routePrefix = '', allRouteKeys = false): string {
  const path = issue.path.map(String).join('.')
  // Problems with a route's own keys are reported under routes.N.; global keys stay as they are.
  const isRouteKey = allRouteKeys || ROUTE_KEYS.some((k) => path === k || path.startsWith(`${k}.`))
  const key = isRouteKey && routePrefix ? `${routePrefix}${path}`.replace(/\.$/, '') : path
  if (issue.code === 'unrecognized_keys') {
    const prefix = key ? `${key}.` : ''
    return issue.keys.map((k) => `${prefix}${k}: unknown key (see docs/configuration.md)`).join('; ')
  }
  if (issue.code === 'invalid_type' && issue.input === undefined) return `${key}: required`
  return `${key || '(top level)'}: ${issue.message}`
}
