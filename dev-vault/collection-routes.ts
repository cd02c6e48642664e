import type { BackendRequest, BackendResult } from './backend.js'
import type { Handler, Router } from './router.js'

/**
 * The paths Vault gives a named collection (roles, static roles): LIST `<base>` for the sorted
 * names, and read, write and delete of `<base>/:name`. Delete and the existence check (create vs
 * update, for ACLs) default to the plain map operations; a collection with more to clean up passes
 * its own.
 */
export function addCollection<T>(
  router: Router<BackendRequest, BackendResult>,
  base: string,
  store: ReadonlyMap<string, T> & { delete(name: string): boolean },
  handlers: {
    read: Handler<BackendRequest, BackendResult>
    write: Handler<BackendRequest, BackendResult>
    delete?: Handler<BackendRequest, BackendResult>
    exists?: (req: BackendRequest) => boolean
  },
): Router<BackendRequest, BackendResult> {
  return router.add(base, { list: () => ({ data: { keys: [...store.keys()].sort() } }) }).add(`${base}/:name`, {
    read: handlers.read,
    write: handlers.write,
    delete:
      handlers.delete ??
      ((req) => {
        store.delete(req.params.name ?? '')
        return undefined
      }),
    exists: handlers.exists ?? ((req) => store.has(req.params.name ?? '')),
  })
}
