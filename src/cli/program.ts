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

export interface ExecFlags extends ConfigFlags {
  database?: string
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

function configOptions(command: Command): Command {
  return command
    .addOption(
      new Option(
        '-c, --config <file>',
        'YAML configuration file (see docs/configuration.md); PGVP_* variables and these flags override it',
      ).env('PGVP_CONFIG'),
    )
    .option('-l, --listen <host:port>', 'TCP address to listen on (overrides `listen`)')
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
        'start the proxy on a private port, run a command with PGHOST, PGPORT, PGDATABASE, PGUSER and DATABASE_URL pointing at it, exit with its status and revoke the lease (for migrations and one-off jobs)',
      )
      .argument('<command...>', 'the command and its arguments, after --'),
  )
    .option('-d, --database <name>', 'PGDATABASE for the command (default: upstream.database, else postgres)')
    .addHelpText(
      'after',
      '\nExamples:\n  pg-vault-proxy exec --config proxy.yaml -- npx prisma migrate deploy\n  pg-vault-proxy exec --config proxy.yaml -- psql -c "select current_user"',
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
