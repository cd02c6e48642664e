import { Command, Option } from 'commander'
import { createRequire } from 'node:module'

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string }

export interface RunOptions {
  config: string
  listen?: string
  logLevel?: string
}

export interface ProgramActions {
  run(options: RunOptions): Promise<void>
}

/** The command-line definition only; what each command does is handed in. */
export function buildProgram(actions: ProgramActions): Command {
  const program = new Command('pg-vault-proxy')
    .description(
      'A local PostgreSQL auth proxy: clients connect without a password; the proxy logs in upstream and every session acts as the owner role.',
    )
    .version(version)
    .showHelpAfterError()

  program
    .command('run', { isDefault: true })
    .description('run the proxy until SIGTERM or SIGINT')
    .requiredOption('-c, --config <file>', 'YAML configuration file (see docs/configuration.md)')
    .option('-l, --listen <host:port>', 'TCP address to listen on; overrides `listen` in the file')
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
    .addHelpText(
      'after',
      `
Examples:
  pg-vault-proxy run --config proxy.yaml
  pg-vault-proxy run --config proxy.yaml --listen 127.0.0.1:6432
  psql "host=127.0.0.1 port=6432 dbname=appdb user=app"   # no password needed`,
    )
    .action((options: RunOptions) => actions.run(options))

  return program
}
