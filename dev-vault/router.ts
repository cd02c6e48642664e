/**
 * A small path router for the paths inside one mount, in the spirit of Vault's framework.Path:
 * a pattern, and one handler per operation.
 *
 * Patterns are '/'-separated: a literal segment, `:name` (one segment that is a valid Vault name,
 * framework.GenericNameRegex) or, last only, `*name` (the rest of the path, slashes included,
 * possibly empty). A trailing '/' on the request path is ignored unless a `*name` segment captures
 * it (LIST secret/metadata/app/ lists "app/"). A path no pattern matches is an unsupported path.
 */

/** Vault's logical operations. HTTP GET is read (or list with ?list=true), PUT and POST are write. */
export type Operation = 'read' | 'list' | 'create' | 'update' | 'delete'

/** framework.GenericNameRegex: role, config and connection names. */
const GENERIC_NAME = /^\w(?:[\w.-]*\w)?$/

/** A handler may answer at once or later. */
export type Handler<Req, Res> = (req: Req) => Res | Promise<Res>

export interface RouteHandlers<Req, Res> {
  read?: Handler<Req, Res>
  list?: Handler<Req, Res>
  /** Serves both create and update; which of the two it is matters only to ACL checks. */
  write?: Handler<Req, Res>
  delete?: Handler<Req, Res>
  /**
   * framework.Path ExistenceCheck: a write to a path whose target does not exist yet is a
   * "create", otherwise an "update". Paths without one are always "update", as in Vault.
   */
  exists?: (req: Req) => boolean
}

type Segment = { kind: 'literal'; text: string } | { kind: 'param'; name: string } | { kind: 'rest'; name: string }

interface Route<Req, Res> {
  pattern: string
  segments: Segment[]
  handlers: RouteHandlers<Req, Res>
}

export interface RouteMatch<Req, Res> {
  handlers: RouteHandlers<Req, Res>
  params: Record<string, string>
}

export class Router<Req, Res> {
  private readonly routes: Route<Req, Res>[] = []

  /** Adds a route; the first route that matches a path wins. */
  add(pattern: string, handlers: RouteHandlers<Req, Res>): this {
    const segments = pattern.split('/').map((text, i, all): Segment => {
      if (text.startsWith(':')) return { kind: 'param', name: text.slice(1) }
      if (text.startsWith('*')) {
        if (i !== all.length - 1) throw new Error(`${pattern}: a *rest segment must come last`)
        return { kind: 'rest', name: text.slice(1) }
      }
      return { kind: 'literal', text }
    })
    this.routes.push({ pattern, segments, handlers })
    return this
  }

  match(path: string): RouteMatch<Req, Res> | undefined {
    const parts = path.split('/')
    for (const route of this.routes) {
      const params = matchSegments(route.segments, parts)
      if (params) return { handlers: route.handlers, params }
    }
    return undefined
  }
}

function matchSegments(segments: Segment[], parts: string[]): Record<string, string> | undefined {
  const params: Record<string, string> = {}
  for (const [i, segment] of segments.entries()) {
    if (segment.kind === 'rest') {
      params[segment.name] = parts.slice(i).join('/')
      return params
    }
    const part = parts[i]
    if (part === undefined) return undefined
    if (segment.kind === 'literal' && part !== segment.text) return undefined
    if (segment.kind === 'param') {
      if (!GENERIC_NAME.test(part)) return undefined
      params[segment.name] = part
    }
  }
  const extra = parts.slice(segments.length)
  const onlyTrailingSlash = extra.length === 1 && extra[0] === ''
  return extra.length === 0 || onlyTrailingSlash ? params : undefined
}
