import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto'

/**
 * A SCRAM-SHA-256 password verifier in PostgreSQL's stored form, which Vault puts into
 * `{{password}}` when password_authentication is "scram-sha-256" (so the server never sees the
 * plaintext). 4096 iterations and a 16-byte salt, as Vault's scram package uses. The password is
 * not SASLprep-normalised: generated passwords are ASCII, for which SASLprep changes nothing.
 */
export function scramSha256Verifier(password: string, salt: Buffer = randomBytes(16), iterations = 4096): string {
  const salted = pbkdf2Sync(password, salt, iterations, 32, 'sha256')
  const clientKey = createHmac('sha256', salted).update('Client Key').digest()
  const storedKey = createHash('sha256').update(clientKey).digest()
  const serverKey = createHmac('sha256', salted).update('Server Key').digest()
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`
}
