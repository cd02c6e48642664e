import { readFile } from 'node:fs/promises'
import { parse as parseYaml } from 'yaml'
import type { z } from 'zod'
import { ConfigError } from './config-error.js'
import { configKeys, type ConfigKey } from './schema-keys.js'
import { configSchema, type ParsedConfig } from './schema.js'
import { resolveVaultSettings } from './vault-settings.js'

export type Config = Readonly<ParsedConfig>
export { ConfigError }

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

export function parseConfig(raw: unknown): Config {
  const result = configSchema.safeParse(raw)
  if (!result.success) throw new ConfigError(result.error.issues.map(describeIssue))
  return Object.freeze(result.data)
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
    raw = parseYaml(text) ?? {}
  } catch (err) {
    throw new ConfigError([`${file} is not valid YAML: ${(err as Error).message}`])
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError([`${file} must hold a YAML mapping of settings`])
  }
  return raw as Record<string, unknown>
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
      if (/^(1|true|yes|on)$/i.test(text)) value = true
      else if (/^(0|false|no|off)$/i.test(text)) value = false
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

function describeIssue(issue: z.core.$ZodIssue): string {
  const key = issue.path.map(String).join('.')
  if (issue.code === 'unrecognized_keys') {
    const prefix = key ? `${key}.` : ''
    return issue.keys.map((k) => `${prefix}${k}: unknown key (see docs/configuration.md)`).join('; ')
  }
  if (issue.code === 'invalid_type' && issue.input === undefined) return `${key}: required`
  return `${key || '(top level)'}: ${issue.message}`
}
