import { Command, Option } from 'commander'
import { createRequire } from 'node:module'

export const { version } = createRequire(import.meta.url)('../../package.json') as { version: string }

/** Flags every command that reads the configuration accepts. */
export interface ConfigFlags {
  config?: string
  listen?: string
  logLevel?: string
  logFormat?: string
}

export interface CheckFlags extends ConfigFlags {
  database?: string
}

export interface ExecFlags extends Omit<ConfigFlags, 'listen'> {
  database?: string
  route?: string
}

export interface HealthcheckFlags extends ConfigFlags {
  timeout: string
}

export interface ProgramActions {
  run(flags: ConfigFlags): Promise<void>
  check(flags: CheckFlags): Promise<void>
  exec(command: string[], flags: ExecFlags): Promise<void>
  healthcheck(flags: HealthcheckFlags): Promise<void>
}

/** `listen: false` for a command that ignores the configured listen address (exec). */
function configOptions(command: Command, { listen = true } = {}): Command {
  command.addOption(
    new Option(
      '-c, --config <file>',
      'YAML configuration file (see docs/configuration.md); PGVP_* variables and these flags override it',
    ).env('PGVP_CONFIG'),
  )
  if (listen) command.option('-l, --listen <host:port>', 'TCP address to listen on (overrides `listen`)')
  return command
    .addOption(
      new Option('--log-level <level>', 'overrides log.level').choices([
        'trace',
        'debug',
        'info',
        'warn',
        'error',
        'fatal',
        'silent',
      ]),
    )
    .addOption(new Option('--log-format <format>', 'overrides log.format').choices(['auto', 'json', 'pretty']))
}

/** The command-line definition only; what each command does is handed in. docs/cli.md is generated from it. */
export function buildProgram(actions: ProgramActions): Command {
  const program = new Command('pg-vault-proxy')
    .description(
      'A local PostgreSQL auth proxy: clients connect without a password; the proxy logs in upstream with Vault-issued credentials and every session acts as the owner role.',
    )
    .version(version, '-V, --version', 'print the version')
    .showHelpAfterError()
    .addHelpText(
      'after',
      `
Configuration: a YAML file (--config), PGVP_* environment variables (PGVP_UPSTREAM_HOST, ...)
and flags, in that order of increasing precedence; Vault's VAULT_ADDR, VAULT_TOKEN, ... are read too.`,
    )

  configOptions(program.command('run', { isDefault: true }).description('run the proxy until SIGTERM or SIGINT'))
    .addHelpText(
      'after',
      `
Signals: SIGTERM or SIGINT drains (no new sessions; open ones end at their next idle point or
after shutdown_grace_ms), revokes the leases and exits 0. Another SIGTERM/SIGINT within 1 s is the
same request (a terminal's Ctrl-C can arrive twice, e.g. under npm start); one after that exits at
once, without waiting for sessions or revoking leases (exit 1). SIGHUP reloads the configuration.

Examples:
  pg-vault-proxy run --config proxy.yaml
  PGVP_LOG_LEVEL=debug pg-vault-proxy run --config proxy.yaml --listen 127.0.0.1:6432
  psql "host=127.0.0.1 port=6432 dbname=appdb user=app"   # no password needed`,
    )
    .action((flags: ConfigFlags) => actions.run(flags))

  configOptions(
    program
      .command('check')
      .description(
        'check the whole chain once: the configuration, the Vault login, a credential, the upstream login; prints current_user, session_user and the credential TTL, and exits non-zero at the first step that fails',
      ),
  )
    .option('-d, --database <name>', 'database to log in to (default: upstream.database, else postgres)')
    .addHelpText('after', '\nExample:\n  pg-vault-proxy check --config proxy.yaml')
    .action((flags: CheckFlags) => actions.check(flags))

  configOptions(
    program
      .command('exec')
      .description(
        'start the proxy on a private port, run a command with PGHOST, PGPORT, PGDATABASE, PGUSER, PGSSLMODE and DATABASE_URL pointing at it, exit with its status and revoke the lease (for migrations and one-off jobs)',
      )
      .argument('<command...>', 'the command and its arguments, after --'),
    { listen: false },
  )
    .option('-d, --database <name>', 'PGDATABASE for the command (default: upstream.database, else postgres)')
    .option('-r, --route <name>', 'the route to serve when the configuration has `routes` (default: the first)')
    .addHelpText(
      'after',
      `
exec's proxy listens only on a free port on 127.0.0.1 and in a private socket directory (mode
0700, removed afterwards), with no ops server, whatever listen, socket_dir, routes and ops say,
so exec works beside a running \`run\` of the same file.

The command inherits exec's environment except PGVP_*, VAULT_*, PGPASSWORD, PGPASSFILE,
PGSERVICEFILE, PGSERVICE and PGHOSTADDR: the proxy's secrets stay with the proxy, and nothing
steers libpq away from the private proxy.

Signals: Ctrl-C (SIGINT) and SIGQUIT reach the command from the terminal and are not passed on
again; SIGTERM and SIGHUP are passed on to the command. Either way exec waits for the command,
revokes the lease and exits with the command's status (130 when SIGINT killed it).

Examples:
  pg-vault-proxy exec --config proxy.yaml -- npx prisma migrate deploy
  pg-vault-proxy exec --config proxy.yaml -- psql -c "select current_user"`,
    )
    .action((command: string[], flags: ExecFlags) => actions.exec(command, flags))

  configOptions(
    program
      .command('healthcheck')
      .description(
        'probe the proxy this configuration describes, for a container HEALTHCHECK: GET /readyz on ops.listen, or when ops.enabled is false an SSLRequest to each TCP listener; exits 0 when healthy, 1 when not',
      ),
  )
    .option('--timeout <ms>', 'give up on an answer after this long', '2000')
    .addHelpText('after', '\nExample:\n  PGVP_CONFIG=/etc/pg-vault-proxy/proxy.yaml pg-vault-proxy healthcheck')
    .action((flags: HealthcheckFlags) => actions.healthcheck(flags))

  program
    .command('version')
    .description('print the version')
    .action(() => {
      process.stdout.write(`pg-vault-proxy ${version}\n`)
    })

  return program
}
