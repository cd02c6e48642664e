import { readdir, readFile } from 'node:fs/promises'
import t from 'tap'
import { renderCliDocs } from '../../src/cli/cli-docs.js'
import { CONFIG_KEYS, ROUTE_KEYS, routeEntrySchema } from '../../src/config/load-config.js'
import { ProxyMetrics } from '../../src/ops/metrics.js'

// The docs pages that list what the code also lists are held to the code: the lists below come
// from the code (the schema, the metrics registry, the sources), never from a hand-kept copy, so a
// key, metric or refusal added without its documentation fails here.

const read = (path: string): Promise<string> => readFile(new URL(`../../${path}`, import.meta.url), 'utf8')

interface Row {
  /** The `## ` heading the table sits under. */
  section: string
  cells: string[]
}

/** Every body row of every Markdown table, with the heading it sits under. */
function tableRows(markdown: string): Row[] {
  const rows: Row[] = []
  let section = ''
  let header = true
  for (const line of markdown.split('\n')) {
    if (line.startsWith('## ')) section = line.slice(3).trim()
    if (!line.startsWith('|')) {
      header = true
      continue
    }
    const cells = line
      .slice(1, line.trimEnd().endsWith('|') ? line.trimEnd().length - 1 : undefined)
      .split('|')
      .map((c) => c.trim())
    if (cells.every((c) => /^:?-+:?$/.test(c))) continue
    if (header) {
      header = false
      continue
    }
    rows.push({ section, cells })
  }
  return rows
}

/** The `code` spans of a cell. */
const codeSpans = (cell: string): string[] => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1] ?? '')

void t.test('docs/cli.md is generated from the current program (npm run docs:cli)', async (t) => {
  const onDisk = await read('docs/cli.md')
  t.equal(onDisk, renderCliDocs(), 'docs/cli.md is stale: run npm run docs:cli')
})

void t.test('the table parser', async (t) => {
  const rows = tableRows('## `a`\n\n| key | x |\n| --- | --- |\n| `a.b`, `a.c` | 1 |\n\ntext\n| h |\n|-|\n| `d` |\n')
  t.same(rows, [
    { section: '`a`', cells: ['`a.b`, `a.c`', '1'] },
    { section: '`a`', cells: ['`d`'] },
  ])
  t.same(codeSpans('`a.b`, `a.c` and more'), ['a.b', 'a.c'])
})

void t.test('docs/configuration.md: every key of the schema, and no other, in its own section', async (t) => {
  const doc = await read('docs/configuration.md')
  const rows = tableRows(doc)
  const keyLike = /^[a-z_]+(?:\[\])?(?:\.[a-z_]+)*$/
  const documented = rows.flatMap((row) =>
    codeSpans(row.cells[0] ?? '')
      .filter((span) => keyLike.test(span))
      .map((key) => ({ key, section: row.section })),
  )
  const documentedKeys = new Set(documented.map((d) => d.key))

  const schemaKeys = CONFIG_KEYS.map((k) => k.path)
  t.same(
    schemaKeys.filter((key) => !documentedKeys.has(key)),
    [],
    'configuration keys without a row in docs/configuration.md',
  )

  // routes[].X: the keys of a routes entry that are not also top-level keys.
  const routeOnly = Object.keys(routeEntrySchema.shape).filter((k) => !(ROUTE_KEYS as readonly string[]).includes(k))
  const known = new Set([...schemaKeys, ...routeOnly.map((k) => `routes[].${k}`)])
  t.same(
    [...documentedKeys].filter((key) => !known.has(key)),
    [],
    'keys documented in docs/configuration.md that the schema does not have',
  )
  t.same(
    routeOnly.filter((k) => !documentedKeys.has(`routes[].${k}`)),
    [],
    'routes entry keys without a row',
  )

  // Each key sits under its own section: `upstream.*` under `upstream`, top-level keys under Top level.
  const misplaced = documented
    .filter(({ key, section }) => section !== (key.includes('.') ? `\`${key.split(/[.[]/)[0]}\`` : 'Top level'))
    .map(({ key, section }) => `${key} under ## ${section}`)
  t.same(misplaced, [], 'keys documented under another section than their own')

  // The keys a routes entry takes from the top level are named in the routes section's prose.
  const routesSection = doc.slice(doc.indexOf('## `routes`'))
  const prose = routesSection.slice(0, routesSection.indexOf('|'))
  for (const key of ROUTE_KEYS) t.match(prose, `\`${key}\``, `the routes section names ${key} as a route key`)
})

void t.test('docs/operations.md: every metric of the registry, with its type and labels, and no other', async (t) => {
  const doc = await read('docs/operations.md')
  const rows = tableRows(doc).filter((row) => row.section === 'Metrics')
  const documented = new Map(
    rows.map((row) => {
      const [name = '', type = '', labels = ''] = row.cells
      return [codeSpans(name)[0] ?? name, { type, labels }]
    }),
  )
  const metrics = new ProxyMetrics().registry.getMetricsAsArray()
  t.ok(metrics.length > 10, 'the registry lists the metrics')
  t.same(
    metrics.map((m) => m.name).filter((name) => !documented.has(name)),
    [],
    'metrics missing from the table in docs/operations.md',
  )
  const names = new Set(metrics.map((m) => m.name))
  t.same(
    [...documented.keys()].filter((name) => !names.has(name)),
    [],
    'metrics documented in docs/operations.md that the registry does not have',
  )
  for (const metric of metrics) {
    const row = documented.get(metric.name)
    if (!row) continue
    t.equal(row.type, String(metric.type), `${metric.name}: type`)
    // prom-client keeps a metric's label names on the metric object; its typings leave them out.
    const labelNames = (metric as unknown as { labelNames?: readonly string[] }).labelNames ?? []
    // The labels cell: `label` or `label` = `value`, …; labels separated by ";".
    const labels = row.labels
      .split(';')
      .map((part) => /^`([a-z_]+)`/.exec(part.trim())?.[1])
      .filter((name) => name !== undefined)
    t.same(labels.sort(), [...labelNames].sort(), `${metric.name}: labels`)
  }
})

void t.test('every pg_vault_proxy_ metric a docs page names exists', async (t) => {
  const metrics = new ProxyMetrics().registry.getMetricsAsArray()
  const names = new Set(metrics.map((m) => m.name))
  const histograms = metrics.filter((m) => String(m.type) === 'histogram').map((m) => m.name)
  for (const h of histograms) for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${h}${suffix}`)
  const pages = (await readdir(new URL('../../docs/', import.meta.url))).filter((f) => f.endsWith('.md'))
  for (const page of pages) {
    const text = await read(`docs/${page}`)
    const unknown = [...new Set([...text.matchAll(/\bpg_vault_proxy_[a-z_]+/g)].map((m) => m[0]))].filter(
      (name) => !names.has(name),
    )
    t.same(unknown, [], `docs/${page} names only metrics that exist`)
  }
})

void t.test('docs/operations.md lists every refusal reason the proxy counts, and no other', async (t) => {
  // The reasons are the first argument of each `new ProxyError(...)`, of the subclasses' super(), and
  // of each sessionRefused('...') with a literal.
  const reasons = new Set<string>(['internal_error']) // client-session.ts counts unexpected errors so
  const files = (await readdir(new URL('../../src/', import.meta.url), { recursive: true })).filter((f) =>
    f.endsWith('.ts'),
  )
  for (const file of files) {
    const text = await read(`src/${file}`)
    for (const m of text.matchAll(/new ProxyError\(\s*'([a-z_]+)'/g)) reasons.add(m[1] ?? '')
    // Refusals counted without a ProxyError (the startup-slot refusal is written before any packet is read).
    for (const m of text.matchAll(/sessionRefused\('([a-z_]+)'\)/g)) reasons.add(m[1] ?? '')
    if (/extends ProxyError\b/.test(text))
      for (const m of text.matchAll(/super\(\s*'([a-z_]+)'/g)) reasons.add(m[1] ?? '')
  }
  t.ok(reasons.has('too_many_clients') && reasons.has('upstream_refused'), 'the scan finds the reasons')
  const doc = await read('docs/operations.md')
  const row = tableRows(doc).find((r) => r.cells[0] === '`pg_vault_proxy_session_failures_total`')
  const documented = new Set(codeSpans(row?.cells[3] ?? '').filter((s) => /^[a-z_]+$/.test(s)))
  t.same(
    [...reasons].filter((r) => !documented.has(r)).sort(),
    [],
    'refusal reasons missing from pg_vault_proxy_session_failures_total',
  )
  t.same([...documented].filter((r) => !reasons.has(r)).sort(), [], 'documented refusal reasons the code does not have')
})

void t.test('every configuration key a docs page names exists', async (t) => {
  const keys = CONFIG_KEYS.map((k) => k.path)
  // A section (`credentials.vault`) or a wildcard (`ops.*`) names the keys under it.
  const exists = (name: string): boolean => {
    const stem = name.replace(/\.\*$/, '')
    return keys.some((key) => key === stem || key.startsWith(`${stem}.`))
  }
  const sections = [...new Set(keys.filter((k) => k.includes('.')).map((k) => k.split('.')[0]))].join('|')
  const mention = new RegExp(`\`((?:${sections})\\.[a-z_.*]+)(?::[^\`]*)?\``, 'g')
  const pages = (await readdir(new URL('../../docs/', import.meta.url))).filter((f) => f.endsWith('.md'))
  for (const page of pages) {
    const text = await read(`docs/${page}`)
    const unknown = [...new Set([...text.matchAll(mention)].map((m) => m[1] ?? ''))].filter((name) => !exists(name))
    t.same(unknown, [], `docs/${page} names only configuration keys that exist`)
  }
})
