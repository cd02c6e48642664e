import type { z } from 'zod'

/** A settable key of the configuration, as its dotted path and the kind of value it takes. */
export interface ConfigKey {
  path: string
  kind: 'string' | 'number' | 'boolean' | 'list' | 'address'
  /** The environment variable that sets it: PGVP_ + the path in upper case, dots as underscores. */
  env: string
}

type AnySchema = z.core.$ZodType

/**
 * Every leaf key of a schema, found by walking its objects through optional, default and
 * transform wrappers. The environment variables, the docs check and the CLI help all come from
 * this one list, so none of them can drift from the schema.
 */
export function configKeys(schema: AnySchema, prefix = ''): ConfigKey[] {
  const def = schema._zod.def as {
    type: string
    shape?: Record<string, AnySchema>
    innerType?: AnySchema
    in?: AnySchema
  }
  switch (def.type) {
    case 'optional':
    case 'default':
    case 'nullable':
      return configKeys(def.innerType as AnySchema, prefix)
    case 'object':
      return Object.entries(def.shape ?? {}).flatMap(([key, child]) =>
        configKeys(child, prefix ? `${prefix}.${key}` : key),
      )
    default:
      return [{ path: prefix, kind: kindOf(def), env: `PGVP_${prefix.replaceAll('.', '_').toUpperCase()}` }]
  }
}

function kindOf(def: { type: string; in?: AnySchema }): ConfigKey['kind'] {
  switch (def.type) {
    case 'number':
      return 'number'
    case 'boolean':
      return 'boolean'
    case 'array':
      return 'list'
    case 'pipe':
      return 'address'
    default:
      return 'string'
  }
}
