import { readFile } from 'node:fs/promises'
import { parse as parseYaml } from 'yaml'
import type { z } from 'zod'
import { configSchema, type ParsedConfig } from './schema.js'

export type Config = Readonly<ParsedConfig>

/** The configuration was refused; `problems` name each key and what is wrong with it. */
export class ConfigError extends Error {
  override name = 'ConfigError'
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`)
  }
}

export interface ConfigOverrides {
  /** --listen host:port */
  listen?: string | undefined
}

/** Reads the YAML file, applies overrides (flags win over the file), validates everything in one pass. */
export async function loadConfig(file: string, overrides: ConfigOverrides = {}): Promise<Config> {
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
  return parseConfig({ ...(raw as Record<string, unknown>), ...definedOnly(overrides) })
}

export function parseConfig(raw: unknown): Config {
  const result = configSchema.safeParse(raw)
  if (!result.success) throw new ConfigError(result.error.issues.map(describeIssue))
  return Object.freeze(result.data)
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

function definedOnly(overrides: ConfigOverrides): Record<string, unknown> {
  return Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined))
}
