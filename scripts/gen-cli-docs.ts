// Writes docs/cli.md from the program definition: `npm run docs:cli`.
import { writeFile } from 'node:fs/promises'
import { renderCliDocs } from '../src/cli/cli-docs.js'

await writeFile(new URL('../docs/cli.md', import.meta.url), renderCliDocs())
