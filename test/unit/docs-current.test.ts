import { readFile } from 'node:fs/promises'
import t from 'tap'
import { renderCliDocs } from '../../src/cli/cli-docs.js'
import { CONFIG_KEYS } from '../../src/config/load-config.js'

void t.test('docs/cli.md is generated from the current program (npm run docs:cli)', async (t) => {
  const onDisk = await readFile(new URL('../../docs/cli.md', import.meta.url), 'utf8')
  t.equal(onDisk, renderCliDocs(), 'docs/cli.md is stale: run npm run docs:cli')
})

void t.test('docs/configuration.md documents every configuration key', async (t) => {
  const doc = await readFile(new URL('../../docs/configuration.md', import.meta.url), 'utf8')
  const missing = CONFIG_KEYS.map((k) => k.path).filter((path) => !doc.includes(`\`${path}\``))
  t.same(missing, [], 'keys missing from docs/configuration.md')
})
