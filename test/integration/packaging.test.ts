import { readFile } from 'node:fs/promises'
import t from 'tap'
import { parse as parseYaml, parseAllDocuments } from 'yaml'
import { ConfigError, parseConfig } from '../../src/config/load-config.js'

// Static checks of the packaging files: the Dockerfile, .dockerignore, the compose stack's proxy
// configuration, the systemd unit and the Kubernetes manifest. No Docker engine or cluster is
// involved: images are not built here.

const read = (path: string): Promise<string> => readFile(new URL(`../../${path}`, import.meta.url), 'utf8')

interface Instruction {
  keyword: string
  args: string
}

interface Stage {
  from: string
  name: string | undefined
  instructions: Instruction[]
}

/** Dockerfile → stages of instructions (continuation lines joined, comments dropped). */
function parseDockerfile(text: string): Stage[] {
  const logical = text
    .split('\n')
    .filter((line) => !/^\s*#/.test(line))
    .join('\n')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '')
  const stages: Stage[] = []
  for (const line of logical) {
    // Lines are trimmed: the keyword, then its arguments after the first run of whitespace.
    const [keyword = '', ...rest] = line.split(/(\s+)/)
    const args = rest.slice(1).join('')
    if (keyword.toUpperCase() === 'FROM') {
      const [, from = '', name] = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args) ?? []
      stages.push({ from, name, instructions: [] })
    } else {
      stages.at(-1)?.instructions.push({ keyword: keyword.toUpperCase(), args })
    }
  }
  return stages
}

/** What the real schema says about a configuration: [] when it is valid. */
function configProblems(raw: unknown): string[] {
  try {
    parseConfig(raw)
    return []
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    return err.problems
  }
}

void t.test('Dockerfile: multi-stage, slim, non-root, HEALTHCHECK', async (t) => {
  const stages = parseDockerfile(await read('Dockerfile'))
  t.ok(stages.length >= 2, 'more than one stage')
  for (const stage of stages) t.ok(stage.name, `FROM ${stage.from} AS <name>`)
  t.same(
    stages.map((s) => s.name),
    ['deps', 'build', 'prod-deps', 'runtime'],
  )
  const [deps, build, prodDeps, runtime] = stages as [Stage, Stage, Stage, Stage]
  t.match(deps.from, /^node:20-(bookworm-)?slim$/)
  t.match(runtime.from, /^node:20-(bookworm-)?slim$/, 'a slim runtime base')
  // Both branch off the dependencies, so a change to src/ rebuilds neither npm ci nor the prune.
  t.equal(build.from, 'deps')
  t.equal(prodDeps.from, 'deps')
  const runs = (stage: Stage): string[] => stage.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.args)
  t.ok(
    runs(deps).some((r) => /npm ci\b/.test(r)),
    'deps: npm ci',
  )
  t.same(
    deps.instructions.filter((i) => i.keyword === 'COPY').map((i) => i.args),
    ['package.json package-lock.json ./'],
    'deps: only the package files, so the npm ci layer is cached until they change',
  )
  t.ok(
    runs(build).some((r) => /npm run build\b/.test(r)),
    'build: npm run build',
  )
  t.ok(
    runs(prodDeps).some((r) => /npm prune --omit=dev\b/.test(r)),
    'prod-deps: npm prune --omit=dev',
  )
  t.ok(
    build.instructions.some((i) => i.keyword === 'COPY' && /\bdev-vault\b/.test(i.args)),
    'the build stage has dev-vault/ for the compose vault-init service',
  )

  const last = (keyword: string): string | undefined =>
    runtime.instructions.filter((i) => i.keyword === keyword).at(-1)?.args
  const user = last('USER')
  t.ok(user, 'the runtime stage sets USER')
  t.notMatch(user ?? '', /^(root|0)(:|$)/, 'USER is not root')
  t.match(user ?? '', /^\d+(:\d+)?$/, 'USER is numeric (Kubernetes runAsNonRoot can verify it)')
  // The HEALTHCHECK reads the proxy's own configuration (scripts/image-test.sh runs it for real).
  const healthcheck = last('HEALTHCHECK') ?? ''
  const cmdAt = healthcheck.indexOf('CMD')
  t.same(JSON.parse(cmdAt < 0 ? 'null' : healthcheck.slice(cmdAt + 3).trim()), [
    'node',
    '/app/bin/pg-vault-proxy.js',
    'healthcheck',
  ])
  const probeTimeout = /--timeout=(\d+)s/.exec(healthcheck.slice(0, Math.max(0, cmdAt)))?.[1]
  t.ok(Number(probeTimeout) > 2, 'Docker waits longer than the probe itself (2 s) plus Node starting')
  t.same(JSON.parse(last('ENTRYPOINT') ?? 'null'), ['node', '--max-semi-space-size=1', '/app/bin/pg-vault-proxy.js'])
  t.same(JSON.parse(last('CMD') ?? 'null'), ['run'])
  t.equal(last('ENV'), 'PGVP_CONFIG=/etc/pg-vault-proxy/proxy.yaml', 'run and healthcheck read the same file')
  t.match(last('EXPOSE') ?? '', /\b6432\b/)

  // The runtime gets the pruned node_modules and the compiled code, nothing from the build tree else.
  const copies = runtime.instructions.filter((i) => i.keyword === 'COPY').map((i) => i.args)
  t.ok(copies.includes('--from=prod-deps /app/node_modules ./node_modules'))
  t.same(
    copies.filter((c) => c.startsWith('--from=build')),
    ['--from=build /app/dist ./dist'],
  )
})

void t.test('.dockerignore lets in what the Dockerfile copies, and only that', async (t) => {
  const patterns = (await read('.dockerignore'))
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
  t.equal(patterns[0], '*', 'an allowlist: everything is excluded first')
  const allowed = patterns.filter((p) => p.startsWith('!')).map((p) => p.slice(1).replace(/\/$/, ''))
  for (const forbidden of ['node_modules', 'dist', '.git', 'test', '.tap']) {
    t.notOk(allowed.includes(forbidden), `${forbidden} stays out of the build context`)
  }
  const sources = parseDockerfile(await read('Dockerfile'))
    .flatMap((s) => s.instructions)
    .filter((i) => i.keyword === 'COPY' && !i.args.startsWith('--from='))
    .flatMap((i) => i.args.split(/\s+/).slice(0, -1))
  t.ok(sources.length > 0)
  for (const source of sources) {
    t.ok(allowed.includes(source.replace(/\/$/, '')), `${source} is in the build context`)
  }
})

void t.test("the compose stack's proxy configuration is valid", async (t) => {
  const template = await read('deploy/compose/proxy.yaml.template')
  t.match(template, /@ROLE_ID@/, 'vault-init fills in the role_id')
  const raw = parseYaml(template.replaceAll('@ROLE_ID@', '460e230f-4bea-4786-bac0-558abc04da95')) as Record<
    string,
    unknown
  >
  t.same(configProblems(raw), [])
  const config = parseConfig(raw)
  t.same(config.listen, { host: '0.0.0.0', port: 6432 })
  t.equal(config.allow_remote, true)
  t.equal(config.vault?.auth.method, 'approle')
  t.equal(config.vault?.auth.secret_id_file, '/etc/pg-vault-proxy/secret-id')
  t.equal(config.credentials.vault?.role, 'app-rw')
  t.equal(config.ops.enabled, true, "the image's HEALTHCHECK asks its ops server for /readyz")

  const script = await read('deploy/compose/vault-init.sh')
  t.match(script, /--dynamic-role app-rw\b/, 'the role the config names is the one vault-init creates')
  t.match(script, /--owner-role app_owner\b/)
  const sql = await read('deploy/compose/initdb/01-roles.sql')
  for (const role of ['app_owner', 'vault_admin', 'app_static']) t.match(sql, new RegExp(`CREATE ROLE ${role}\\b`))
})

void t.test('systemd unit: hardened, reloadable, restarted on failure', async (t) => {
  const unit = await read('docs/examples/pg-vault-proxy.service')
  const settings = new Map<string, string[]>()
  let section = ''
  for (const line of unit.split('\n')) {
    const header = /^\[(\w+)\]$/.exec(line)
    if (header) section = header[1]!
    const setting = /^(\w+)=(.*)$/.exec(line)
    if (setting) {
      const key = `${section}.${setting[1]}`
      settings.set(key, [...(settings.get(key) ?? []), setting[2]!])
    }
  }
  const one = (key: string): string | undefined => settings.get(key)?.at(-1)
  t.match(one('Service.ExecStart'), /bin\/pg-vault-proxy\.js run --config \/etc\/pg-vault-proxy\/proxy\.yaml$/)
  t.equal(one('Service.ExecReload'), '/bin/kill -HUP $MAINPID')
  t.equal(one('Service.Restart'), 'on-failure')
  t.ok(one('Service.DynamicUser') === 'yes' || one('Service.User'), 'runs as an unprivileged user')
  t.equal(one('Service.RuntimeDirectory'), 'pg-vault-proxy', '/run/pg-vault-proxy for the Unix socket')
  t.equal(one('Service.NoNewPrivileges'), 'yes')
  t.equal(one('Service.ProtectSystem'), 'strict')
  t.equal(one('Service.PrivateTmp'), 'yes')
  t.ok(one('Service.ReadOnlyPaths'))
  t.equal(one('Install.WantedBy'), 'multi-user.target')
})

void t.test('Kubernetes manifest: the proxy is a native sidecar', async (t) => {
  const docs = parseAllDocuments(await read('docs/examples/kubernetes-sidecar.yaml'))
  for (const doc of docs) t.same(doc.errors, [], 'parses as YAML')
  const objects = docs.map((d) => d.toJS() as { kind: string; metadata: { name: string }; [k: string]: unknown })
  t.same(objects.map((o) => o.kind).sort(), ['ConfigMap', 'Deployment', 'ServiceAccount'])

  type Probe = { httpGet: { path: string; port: string | number } }
  type Container = {
    name: string
    image: string
    restartPolicy?: string
    env?: { name: string; value: string }[]
    startupProbe?: Probe
    readinessProbe?: Probe
    livenessProbe?: Probe
    ports?: { name: string; containerPort: number }[]
    securityContext?: Record<string, unknown>
    volumeMounts?: { name: string; mountPath: string }[]
  }
  const deployment = objects.find((o) => o.kind === 'Deployment') as unknown as {
    spec: {
      template: {
        spec: {
          securityContext: Record<string, unknown>
          initContainers: Container[]
          containers: Container[]
          volumes: { name: string; emptyDir?: unknown; configMap?: { name: string } }[]
        }
      }
    }
  }
  const pod = deployment.spec.template.spec
  const sidecar = pod.initContainers.find((c) => c.image.includes('pg-vault-proxy'))
  t.ok(sidecar, 'the proxy is an init container')
  t.equal(sidecar?.restartPolicy, 'Always', 'with restartPolicy: Always (a native sidecar)')
  t.equal(pod.securityContext.runAsNonRoot, true)
  t.equal(sidecar?.securityContext?.readOnlyRootFilesystem, true)
  t.equal(sidecar?.securityContext?.allowPrivilegeEscalation, false)
  const opsPort = sidecar?.ports?.find((p) => p.name === sidecar.startupProbe?.httpGet.port)?.containerPort
  t.equal(opsPort, 9187)
  t.equal(sidecar?.startupProbe?.httpGet.path, '/startupz')
  t.equal(sidecar?.readinessProbe?.httpGet.path, '/readyz')
  t.equal(sidecar?.livenessProbe?.httpGet.path, '/livez')

  const app = pod.containers[0]
  t.equal(app?.env?.find((e) => e.name === 'PGHOST')?.value, '127.0.0.1')
  const socketVolume = pod.volumes.find((v) => v.emptyDir !== undefined)
  t.ok(socketVolume, 'an emptyDir for the Unix socket')
  for (const container of [sidecar, app]) {
    t.ok(
      container?.volumeMounts?.some((m) => m.name === socketVolume?.name && m.mountPath === '/run/pg-vault-proxy'),
      `${container?.name} mounts the socket directory`,
    )
  }

  const configMap = objects.find((o) => o.kind === 'ConfigMap') as unknown as { data: Record<string, string> }
  t.equal(
    pod.volumes.find((v) => v.configMap)?.configMap?.name,
    (configMap as unknown as { metadata: { name: string } }).metadata.name,
  )
  const raw = parseYaml(configMap.data['proxy.yaml'] ?? '') as unknown
  t.same(configProblems(raw), [], 'proxy.yaml is a valid configuration')
  const config = parseConfig(raw)
  t.same(config.ops.listen, { host: '0.0.0.0', port: 9187 }, 'the ops server is reachable by the kubelet')
  t.equal(config.ops.allow_remote, true)
  t.same(config.listen, { host: '127.0.0.1', port: 5432 })
  t.equal(config.allow_remote, false)
  t.equal(config.socket_dir, '/run/pg-vault-proxy')
  t.equal(config.vault?.auth.method, 'kubernetes')
  t.ok(config.vault?.auth.role)
})
