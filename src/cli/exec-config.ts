import type { Config } from '../config/load-config.js'

/**
 * The configuration `exec` serves: one route (the one named, else the first) on a free loopback
 * port and the given private socket directory, whatever the file says about `listen`, `socket_dir`,
 * `routes` and `ops`, so that exec works beside a `run` of the same file and opens nothing anyone
 * else could reach for longer than the command runs.
 */
export function execConfig(config: Config, socketDir: string, routeName?: string): Config {
  const route = routeName === undefined ? config.routes[0] : config.routes.find((r) => r.name === routeName)
  if (route === undefined) {
    const names = config.routes.map((r) => `"${r.name}"`).join(', ')
    throw new ExecRouteError(`exec: no route named "${routeName}" (the configuration has ${names})`)
  }
  const only = Object.freeze({
    ...route.config,
    listen: { host: '127.0.0.1', port: 0 },
    allow_remote: false,
    socket_dir: socketDir,
    socket_mode: '0700',
    ops: { ...route.config.ops, enabled: false },
  })
  return Object.freeze({ ...only, routes: [{ name: route.name, users: undefined, config: only }] })
}

/** A --route that names no route: bad usage, reported as such. */
export class ExecRouteError extends Error {}
