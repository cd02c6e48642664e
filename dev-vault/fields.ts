/**
 * Typed access to a request's JSON body, with the lenient conversions of Vault's framework field
 * types (mapstructure weak decoding): "3600" and 3600 are the same int, "true" is a bool, a single
 * string is a one-element list.
 */
import { respondError } from './envelope.js'
import { parseDurationSeconds } from './ttl.js'

export class Fields {
  constructor(readonly raw: Readonly<Record<string, unknown>>) {}

  /** Whether the request set this field at all (framework GetOk). */
  has(name: string): boolean {
    return this.raw[name] !== undefined && this.raw[name] !== null
  }

  string(name: string, fallback = ''): string {
    const value = this.raw[name]
    if (value === undefined || value === null) return fallback
    if (typeof value === 'string') return value
    if (typeof value === 'number' || typeof value === 'boolean') return String(value)
    throw conversionError(name, value)
  }

  bool(name: string, fallback: boolean): boolean {
    const value = this.raw[name]
    if (value === undefined || value === null) return fallback
    if (typeof value === 'boolean') return value
    if (typeof value === 'number') return value !== 0
    if (typeof value === 'string') {
      if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(value)) return true
      if (['0', 'f', 'F', 'FALSE', 'false', 'False', ''].includes(value)) return false
    }
    throw conversionError(name, value)
  }

  int(name: string, fallback = 0): number {
    const value = this.raw[name]
    if (value === undefined || value === null) return fallback
    if (typeof value === 'number' && Number.isInteger(value)) return value
    if (typeof value === 'string' && /^-?\d+$/.test(value.trim())) return Number(value.trim())
    throw conversionError(name, value)
  }

  /** TypeDurationSecond: 3600, "3600", "1h". */
  durationSeconds(name: string, fallback = 0): number {
    const value = this.raw[name]
    if (value === undefined || value === null) return fallback
    const seconds = parseDurationSeconds(value)
    if (seconds === undefined) throw conversionError(name, value)
    return seconds
  }

  /** TypeStringSlice: an array, or one string that becomes a one-element list (not split). */
  stringList(name: string): string[] {
    const value = this.raw[name]
    if (value === undefined || value === null || value === '') return []
    if (typeof value === 'string') return [value]
    if (Array.isArray(value)) return value.map((v) => (typeof v === 'string' ? v : JSON.stringify(v)))
    throw conversionError(name, value)
  }

  /** TypeCommaStringSlice: an array, or a string split on commas; items trimmed, empties dropped. */
  commaList(name: string): string[] {
    const value = this.raw[name]
    if (value === undefined || value === null) return []
    const items = typeof value === 'string' ? value.split(',') : Array.isArray(value) ? value : undefined
    if (items === undefined) throw conversionError(name, value)
    return items.map((v) => String(v).trim()).filter((v) => v !== '')
  }

  /** TypeMap. */
  map(name: string): Record<string, unknown> | undefined {
    const value = this.raw[name]
    if (value === undefined || value === null) return undefined
    if (typeof value === 'object' && !Array.isArray(value)) return value as Record<string, unknown>
    if (typeof value === 'string' && value.trim().startsWith('{')) {
      const parsed: unknown = JSON.parse(value)
      if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed))
        return parsed as Record<string, unknown>
    }
    throw conversionError(name, value)
  }

  /** TypeKVPairs: a map of strings (numbers and bools are stringified). */
  stringMap(name: string): Record<string, string> {
    const map = this.map(name) ?? {}
    return Object.fromEntries(Object.entries(map).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]))
  }
}

function conversionError(name: string, value: unknown): Error {
  const shown = typeof value === 'string' ? value : JSON.stringify(value)
  return respondError(`error converting input ${shown} for field ${JSON.stringify(name)}`)
}
