import { z } from 'zod'

// The configuration file's shape. Keys are snake_case as users write them; every object is strict,
// so a misspelt key is refused instead of silently ignored.

export const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] as const
export type SslMode = (typeof SSL_MODES)[number]

/**
 * upstream.sslmode when unset: prefer, as libpq, except that sslrootcert "system" makes it
 * verify-full (libpq's sslrootcert documentation; src/interfaces/libpq/fe-connect.c).
 */
export function defaultSslMode(sslrootcert: string | undefined): SslMode {
  return sslrootcert === 'system' ? 'verify-full' : 'prefer'
}

const port = z.number().int().min(1).max(65535)
const positiveMs = z.number().int().positive()

/** `host:port`, `[v6]:port`, or a bare port (host defaults to 127.0.0.1). */
export const listenAddress = z.union([port, z.string().min(1)]).transform((value, ctx) => {
  const parsed = parseListenAddress(String(value))
  if (!parsed) {
    ctx.addIssue({ code: 'custom', message: `expected host:port (e.g. 127.0.0.1:6432), got "${value}"` })
    return z.NEVER
  }
  return parsed
})

export function parseListenAddress(value: string): { host: string; port: number } | undefined {
  // host:port, [ipv6]:port, or a bare port.
  const match = /^(?:(?:\[([^\]]+)\]|([^:]*)):)?(\d{1,5})$/.exec(value)
  if (!match) return undefined
  const portNumber = Number(match[3])
  if (portNumber < 0 || portNumber > 65535) return undefined
  return { host: match[1] || match[2] || '127.0.0.1', port: portNumber }
}

export const configSchema = z
  .object({
    listen: listenAddress.default({ host: '127.0.0.1', port: 5432 }),
    socket_dir: z.string().min(1).optional(),
    socket_mode: z
      .string()
      .regex(/^0?[0-7]{3}$/, 'expected an octal file mode such as "0700"')
      .default('0700'),
    allow_remote: z.boolean().default(false),
    owner_role: z.string().min(1).max(63),
    max_client_connections: z.number().int().positive().default(100),
    startup_timeout_ms: positiveMs.default(10_000),
    // Connections accepted but without a startup packet yet; beyond it new ones get 53300 at once.
    max_startup_connections: z.number().int().positive().default(100),
    // SIGTERM/SIGINT: how long open sessions may take to reach an idle point before they are ended.
    shutdown_grace_ms: z.number().int().min(0).default(30_000),
    // Unset: idle clients are kept forever, as PostgreSQL's idle_session_timeout = 0.
    idle_client_timeout_ms: positiveMs.optional(),
    // Moving live sessions to fresh credentials, and reconnecting them after upstream loss (docs/rotation.md).
    rotation: z
      .object({
        swap_before_end_ms: z.number().int().min(0).default(30_000),
        reconnect: z.boolean().default(true),
        strict: z.boolean().default(false),
      })
      .strict()
      .default({ swap_before_end_ms: 30_000, reconnect: true, strict: false }),
    // Server connections kept logged in between clients (docs/configuration.md, docs/architecture.md).
    pool: z
      .object({
        mode: z.enum(['session', 'none']).default('session'),
        reset_query: z.string().min(1).default('DISCARD ALL'),
        max_idle: z.number().int().min(0).default(20),
        idle_timeout_ms: positiveMs.default(600_000),
        server_lifetime_ms: positiveMs.default(3_600_000),
        // Idle, linked and opening server connections per route; clients beyond it wait, then get 53300.
        max_server_connections: z.number().int().positive().default(100),
        wait_timeout_ms: z.number().int().min(0).default(5_000),
        // Idle connections kept logged in ahead of clients, for each of the 8 most recently used keys.
        min_idle: z.number().int().min(0).default(1),
        // A pooled connection whose role was last checked longer ago is checked again on link (0: always).
        server_check_delay_ms: z.number().int().min(0).default(0),
      })
      .strict()
      .default({
        mode: 'session',
        reset_query: 'DISCARD ALL',
        max_idle: 20,
        idle_timeout_ms: 600_000,
        server_lifetime_ms: 3_600_000,
        max_server_connections: 100,
        wait_timeout_ms: 5_000,
        min_idle: 1,
        server_check_delay_ms: 0,
      }),
    ops: z
      .object({
        enabled: z.boolean().default(true),
        listen: listenAddress.default({ host: '127.0.0.1', port: 9187 }),
        allow_remote: z.boolean().default(false),
      })
      .strict()
      .default({ enabled: true, listen: { host: '127.0.0.1', port: 9187 }, allow_remote: false }),
    upstream: z
      .object({
        host: z.string().min(1),
        port: port.default(5432),
        database: z.string().min(1).max(63).optional(),
        // Always set after parsing (see defaultSslMode); optional here so that the default can depend on sslrootcert.
        sslmode: z.enum(SSL_MODES).optional(),
        sslrootcert: z.string().min(1).optional(),
        sslcert: z.string().min(1).optional(),
        sslkey: z.string().min(1).optional(),
        channel_binding: z.enum(['disable', 'prefer', 'require']).default('prefer'),
        allow_cleartext_password: z.boolean().default(false),
        connect_timeout_ms: positiveMs.default(10_000),
      })
      .strict()
      .overwrite((upstream) => ({ ...upstream, sslmode: upstream.sslmode ?? defaultSslMode(upstream.sslrootcert) })),
    vault: z
      .object({
        address: z.string().url().optional(),
        namespace: z.string().min(1).optional(),
        ca_cert: z.string().min(1).optional(),
        client_cert: z.string().min(1).optional(),
        client_key: z.string().min(1).optional(),
        skip_verify: z.boolean().default(false),
        // At most 10 minutes: a Vault call that long is a hang, and Node timers stop at 24.8 days.
        timeout_ms: positiveMs.max(600_000).default(10_000),
        auth: z
          .object({
            method: z.enum(['token', 'approle', 'kubernetes', 'jwt']).default('token'),
            token: z.string().min(1).optional(),
            token_file: z.string().min(1).optional(),
            role_id: z.string().min(1).optional(),
            secret_id: z.string().min(1).optional(),
            secret_id_file: z.string().min(1).optional(),
            role: z.string().min(1).optional(),
            jwt_file: z.string().min(1).optional(),
            mount: z.string().min(1).optional(),
          })
          .strict()
          .default({ method: 'token' }),
      })
      .strict()
      .optional(),
    credentials: z
      .object({
        static: z
          .object({
            username: z.string().min(1).max(63),
            password: z.string().optional(),
            password_file: z.string().min(1).optional(),
          })
          .strict()
          .optional(),
        vault: z
          .object({
            mount: z.string().min(1).default('database'),
            role: z.string().min(1).optional(),
            static_role: z.string().min(1).optional(),
          })
          .strict()
          .optional(),
        kv: z
          .object({
            mount: z.string().min(1).default('secret'),
            path: z.string().min(1),
            refresh_seconds: z.number().int().positive().default(60),
          })
          .strict()
          .optional(),
        revoke_on_shutdown: z.boolean().default(true),
      })
      .strict(),
    log: z
      .object({
        level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
        // auto: human-readable on a terminal, JSON lines otherwise (a pipe, a log collector).
        format: z.enum(['auto', 'json', 'pretty']).default('auto'),
      })
      .strict()
      .default({ level: 'info', format: 'auto' }),
  })
  .strict()
  .superRefine((config, ctx) => {
    const { upstream, credentials } = config
    const sources = (['static', 'vault', 'kv'] as const).filter((k) => credentials[k] !== undefined)
    if (sources.length !== 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['credentials'],
        message: `set exactly one credential source: credentials.vault (role or static_role), credentials.kv or credentials.static${sources.length > 1 ? ` (found ${sources.join(', ')})` : ''}`,
      })
    }
    if (
      credentials.static &&
      (credentials.static.password === undefined) === (credentials.static.password_file === undefined)
    ) {
      ctx.addIssue({
        code: 'custom',
        path: ['credentials', 'static', 'password_file'],
        message: 'set exactly one of credentials.static.password_file or credentials.static.password',
      })
    }
    if (credentials.vault && (credentials.vault.role === undefined) === (credentials.vault.static_role === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: ['credentials', 'vault', 'role'],
        message: 'set exactly one of credentials.vault.role (dynamic) or credentials.vault.static_role',
      })
    }
    const auth = config.vault?.auth
    if (auth) {
      const needs = (key: keyof typeof auth, why: string): void => {
        if (auth[key] === undefined) ctx.addIssue({ code: 'custom', path: ['vault', 'auth', key], message: why })
      }
      if (auth.method === 'approle') needs('role_id', 'required by vault.auth.method approle')
      if (auth.method === 'kubernetes' || auth.method === 'jwt')
        needs('role', `required by vault.auth.method ${auth.method}`)
      if (auth.method === 'jwt') needs('jwt_file', 'required by vault.auth.method jwt')
      if (auth.token && auth.token_file) {
        ctx.addIssue({
          code: 'custom',
          path: ['vault', 'auth', 'token_file'],
          message: 'set vault.auth.token or vault.auth.token_file, not both',
        })
      }
    }
    if ((upstream.sslmode === 'verify-ca' || upstream.sslmode === 'verify-full') && !upstream.sslrootcert) {
      ctx.addIssue({
        code: 'custom',
        path: ['upstream', 'sslrootcert'],
        message: `sslmode ${upstream.sslmode} needs a CA to verify against: set upstream.sslrootcert to a PEM file, or "system" for the system CAs`,
      })
    }
    if ((upstream.sslcert === undefined) !== (upstream.sslkey === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: ['upstream', 'sslkey'],
        message: 'set upstream.sslcert and upstream.sslkey together',
      })
    }
    if (upstream.sslmode === 'disable' && (upstream.sslrootcert || upstream.sslcert)) {
      ctx.addIssue({
        code: 'custom',
        path: ['upstream', 'sslmode'],
        message: 'TLS files are set but upstream.sslmode is disable',
      })
    }
    // libpq (fe-connect.c): the system's public CAs vouch for any host name, so they mean something
    // only when the name is checked too.
    if (upstream.sslrootcert === 'system' && upstream.sslmode !== 'verify-full') {
      ctx.addIssue({
        code: 'custom',
        path: ['upstream', 'sslrootcert'],
        message: `"system" trusts every public CA for any host name, so (as in libpq) it needs upstream.sslmode verify-full, not ${upstream.sslmode}: set upstream.sslmode: verify-full (or leave it unset), or set upstream.sslrootcert to the PEM file of your server's CA`,
      })
    }
    if (upstream.channel_binding === 'require' && upstream.sslmode === 'disable') {
      ctx.addIssue({
        code: 'custom',
        path: ['upstream', 'channel_binding'],
        message: 'channel_binding require needs TLS (upstream.sslmode)',
      })
    }
    if (upstream.channel_binding === 'require' && upstream.host.startsWith('/')) {
      ctx.addIssue({
        code: 'custom',
        path: ['upstream', 'channel_binding'],
        message:
          'channel_binding require needs TLS, which is never used over a Unix socket (upstream.host is a directory)',
      })
    }
  })

export type RawConfig = z.input<typeof configSchema>
export type ParsedConfig = z.output<typeof configSchema>
