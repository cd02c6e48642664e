/**
 * Which dev Vault flavor the proxy's Vault integration tests run against: PGVP_TEST_VAULT_FLAVOR
 * (vault-1.17, vault-1.16 or openbao), else the dev Vault's default. The files under
 * test/integration/flavors/ set it and load a Vault test file, so the suite covers each flavor.
 */
import t from 'tap'
import { FLAVOR_NAMES, isFlavorName, type FlavorName } from '../../dev-vault/flavor.js'
import { isRealVault } from './vault-target.js'

export function flavorUnderTest(): FlavorName | undefined {
  const name = process.env.PGVP_TEST_VAULT_FLAVOR
  if (name === undefined || name === '') return undefined
  if (!isFlavorName(name)) throw new Error(`PGVP_TEST_VAULT_FLAVOR=${name}: use one of ${FLAVOR_NAMES.join(', ')}`)
  return name
}

/** Runs the Vault test file `file` (relative to test/integration/) against the dev Vault flavor `flavor`. */
export async function runInFlavor(flavor: FlavorName, file: string): Promise<void> {
  if (isRealVault) {
    t.plan(0, `flavors are the dev Vault's; PGVP_TEST_VAULT_ADDR points at a real Vault, tested by ${file}`)
    return
  }
  process.env.PGVP_TEST_VAULT_FLAVOR = flavor
  await import(new URL(`../integration/${file}`, import.meta.url).href)
}
