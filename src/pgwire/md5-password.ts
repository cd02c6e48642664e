import { createHash } from 'node:crypto'

// Response to AuthenticationMD5Password (PostgreSQL: src/common/md5_common.c, pg_md5_encrypt):
// "md5" + hex(md5(hex(md5(password || user)) || salt)). The inner hash is what pg_authid stores, so
// the salt only guards against replay of a sniffed response, not against theft of the stored hash.

/** The password message body (without the trailing NUL) answering an MD5 challenge with a 4-byte salt. */
export function md5PasswordResponse(user: string, password: string, salt: Buffer): string {
  if (salt.length !== 4) throw new Error(`MD5 salt must be 4 bytes, got ${salt.length}`)
  const inner = md5Hex(Buffer.from(password + user, 'utf8'))
  return 'md5' + md5Hex(Buffer.concat([Buffer.from(inner, 'latin1'), salt]))
}

function md5Hex(data: Buffer): string {
  return createHash('md5').update(data).digest('hex')
}
