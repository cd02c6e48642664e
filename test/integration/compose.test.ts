import { spawnSync } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse as parseYaml } from 'yaml'

// docker-compose.yml, checked by Debian's docker-compose (`docker-compose config`). No Docker engine
// is needed for that, and none is used: the images are not built or run here.

const repoRoot = fileURLToPath(new URL('../../', import.meta.url))
const composeFile = fileURLToPath(new URL('../../docker-compose.yml', import.meta.url))

interface Service {
  image?: string
  build?: { context?: string; dockerfile?: string; target?: string }
  depends_on?: Record<string, { condition?: string }> | string[]
  environment?: Record<string, string | null> | string[]
  entrypoint?: string[] | string
  ports?: unknown[]
  volumes?: unknown[]
  network_mode?: string
}

function compose(args: string[]): { status: number | null; stdout: string; stderr: string; missing: boolean } {
  const result = spawnSync('docker-compose', ['-f', composeFile, ...args], {
    cwd: repoRoot,
    encoding: 'utf8',
    // The published port is interpolated from PGVP_COMPOSE_PORT; check the file's own default.
    env: { ...process.env, PGVP_COMPOSE_PORT: undefined },
    timeout: 60_000,
  })
  const missing = result.error !== undefined && 'code' in result.error && result.error.code === 'ENOENT'
  if (result.error && !missing) throw result.error
  return { status: result.status, stdout: result.stdout ?? '', stderr: result.stderr ?? '', missing }
}

const INSTALL_HINT =
  "docker-compose is not installed; install Debian's package (`apt-get install -y docker-compose`, which `bash scripts/setup.sh` does as root)"

/** One `ports` entry, in docker-compose v1's short string form or Compose v2's long form. */
function publishedPort(entry: unknown): { hostIp: string | undefined; published: string | undefined; target: string } {
  if (typeof entry === 'object' && entry !== null) {
    const long = entry as { host_ip?: string; published?: string | number; target: string | number }
    return {
      hostIp: long.host_ip,
      published: long.published === undefined ? undefined : String(long.published),
      target: String(long.target),
    }
  }
  let rest = String(entry).replace(/\/(?:tcp|udp|sctp)$/, '')
  let hostIp: string | undefined
  if (rest.startsWith('[')) {
    const end = rest.indexOf(']')
    hostIp = rest.slice(1, end)
    rest = rest.slice(end + 2)
  }
  const parts = rest.split(':')
  if (hostIp === undefined && parts.length === 3) hostIp = parts.shift()
  const target = parts.pop() ?? ''
  return { hostIp, published: parts.pop(), target }
}

function isLoopback(host: string | undefined): boolean {
  return host !== undefined && (/^127\.\d+\.\d+\.\d+$/.test(host) || host === '::1' || host === 'localhost')
}

function dependsOn(service: Service): Record<string, string | undefined> {
  const deps = service.depends_on ?? {}
  if (Array.isArray(deps)) return Object.fromEntries(deps.map((name) => [name, 'service_started']))
  return Object.fromEntries(Object.entries(deps).map(([name, d]) => [name, d.condition]))
}

/** Bind mounts as { source, target, readOnly }, from either output form. */
function mounts(service: Service): { source: string; target: string; readOnly: boolean }[] {
  return (service.volumes ?? []).map((v) => {
    if (typeof v === 'object' && v !== null) {
      const long = v as { source: string; target: string; read_only?: boolean }
      return { source: long.source, target: long.target, readOnly: long.read_only === true }
    }
    const [source = '', target = '', mode = ''] = String(v).split(':')
    return { source, target, readOnly: mode.split(',').includes('ro') }
  })
}

function environment(service: Service): Record<string, string | null> {
  const env = service.environment ?? {}
  if (!Array.isArray(env)) return env
  return Object.fromEntries(
    env.map((e): [string, string] => {
      const [name = '', ...value] = e.split('=')
      return [name, value.join('=')]
    }),
  )
}

const probe = compose(['version'])
if (probe.missing) {
  t.fail(INSTALL_HINT)
} else {
  void t.test('docker-compose config -q accepts docker-compose.yml', async (t) => {
    const result = compose(['config', '-q'])
    t.equal(result.status, 0, `docker-compose config -q: ${result.stderr}`)
  })

  void t.test('the services, their order and what each runs', async (t) => {
    const result = compose(['config'])
    t.equal(result.status, 0, result.stderr)
    const config = parseYaml(result.stdout) as { services: Record<string, Service> }
    const services = config.services
    t.same(Object.keys(services).sort(), ['client', 'postgres', 'proxy', 'vault', 'vault-init'])
    const { postgres, vault, proxy, client } = services
    const init = services['vault-init']!

    t.match(vault!.image, /^hashicorp\/vault(:|$)/, 'Vault is the official image')
    t.match(postgres!.image, /^postgres:/)
    t.ok(
      mounts(postgres!).some(
        (m) => m.target === '/docker-entrypoint-initdb.d' && m.source.endsWith('deploy/compose/initdb'),
      ),
      'postgres runs deploy/compose/initdb at its first start',
    )

    t.same(dependsOn(init), { postgres: 'service_healthy', vault: 'service_healthy' })
    t.equal(init.build?.target, 'build', 'vault-init runs in the Dockerfile build stage (tsx, dev-vault/)')
    t.equal(environment(init).VAULT_ADDR, 'http://vault:8200')
    const entrypoint = [init.entrypoint ?? []].flat().join(' ')
    t.match(entrypoint, /\/compose\/vault-init\.sh$/)
    t.ok(
      mounts(init).some((m) => m.target === '/compose' && m.source.endsWith('deploy/compose') && m.readOnly),
      'deploy/compose is mounted read-only at /compose',
    )
    const initScript = await readFile(new URL('../../deploy/compose/vault-init.sh', import.meta.url), 'utf8')
    t.match(initScript, /tsx dev-vault\/setup-database\.ts/, 'vault-init runs the setup script the tests use')

    for (const [name, service] of [
      ['vault-init', init],
      ['proxy', proxy!],
    ] as const) {
      t.ok(service.build, `${name} is built from this repository`)
      t.equal(service.build?.context?.replace(/\/$/, ''), repoRoot.replace(/\/$/, ''), `${name}: build context`)
      t.equal(service.build?.dockerfile ?? 'Dockerfile', 'Dockerfile', `${name}: the Dockerfile`)
    }
    t.equal(proxy!.build?.target, 'runtime')
    t.equal(dependsOn(proxy!)['vault-init'], 'service_completed_successfully', 'the proxy waits for vault-init')
    t.ok(
      mounts(proxy!).some((m) => m.target === '/etc/pg-vault-proxy' && m.readOnly),
      'the proxy reads its config volume read-only',
    )
    t.equal(proxy!.network_mode, undefined, 'the proxy stays on the compose network')

    t.equal(dependsOn(client!).proxy, 'service_healthy', 'the client waits for the proxy to be ready')
    t.equal(environment(client!).PGHOST, 'proxy')
  })

  void t.test('nothing is published beyond loopback', async (t) => {
    const result = compose(['config'])
    const services = (parseYaml(result.stdout) as { services: Record<string, Service> }).services
    for (const [name, service] of Object.entries(services)) {
      for (const entry of service.ports ?? []) {
        const port = publishedPort(entry)
        t.ok(isLoopback(port.hostIp), `${name}: port ${JSON.stringify(entry)} is bound to loopback only`)
      }
    }
    const proxyPorts = (services.proxy?.ports ?? []).map(publishedPort)
    t.same(
      proxyPorts.map((p) => [p.hostIp, p.target]),
      [['127.0.0.1', '6432']],
      'the proxy is published on 127.0.0.1 only',
    )
  })

  void t.test('the recommended commands work with docker-compose v1 and Compose v2', async (t) => {
    // `up --exit-code-from` implies --abort-on-container-exit: v1 then stops the stack when the
    // one-shot vault-init exits. `run --rm client` starts the dependencies in order (both versions
    // honour depends_on conditions there) and exits with the client's status.
    const header = (await readFile(composeFile, 'utf8')).split('\n').filter((l) => l.startsWith('#'))
    const commands = header.map((l) => l.replace(/^#\s*/, '')).filter((l) => /^docker-compose\s/.test(l))
    t.same(
      commands.map((c) => c.replace(/\s#.*$/, '').trimEnd()),
      ['docker-compose build', 'docker-compose run --rm client', 'docker-compose down -v'],
      'docker-compose.yml recommends build, run --rm client, down -v',
    )
    const deployment = await readFile(new URL('../../docs/deployment.md', import.meta.url), 'utf8')
    t.match(deployment, /^docker compose run --rm client\b/m, 'docs/deployment.md gives the same command')
    for (const [name, text] of [
      ['docker-compose.yml', commands.join('\n')],
      [
        'docs/deployment.md',
        deployment
          .split('\n')
          .filter((l) => /^docker[ -]compose /.test(l))
          .join('\n'),
      ],
    ] as const) {
      t.notMatch(
        text,
        /--exit-code-from|--abort-on-container-exit/,
        `${name} suggests no command that aborts on vault-init`,
      )
    }
    const result = compose(['config'])
    const services = (parseYaml(result.stdout) as { services: Record<string, Service & { restart?: string }> }).services
    t.equal(services['vault-init']?.restart, 'no', 'vault-init is a one-shot service')
    t.equal(services.client?.restart, 'no', 'the client is a one-shot service')
  })

  void t.test('the port parser reads both output forms', async (t) => {
    t.same(publishedPort('127.0.0.1:6432:6432/tcp'), { hostIp: '127.0.0.1', published: '6432', target: '6432' })
    t.same(publishedPort('6432:6432/tcp'), { hostIp: undefined, published: '6432', target: '6432' })
    t.same(publishedPort('6432'), { hostIp: undefined, published: undefined, target: '6432' })
    t.same(publishedPort('[::1]:6432:6432'), { hostIp: '::1', published: '6432', target: '6432' })
    t.same(publishedPort({ host_ip: '0.0.0.0', published: '6432', target: 6432 }), {
      hostIp: '0.0.0.0',
      published: '6432',
      target: '6432',
    })
    t.notOk(isLoopback(undefined))
    t.notOk(isLoopback('0.0.0.0'))
  })
}
