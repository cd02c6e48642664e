import { createHash } from 'node:crypto'
import t from 'tap'
import { md5PasswordResponse } from '../../src/pgwire/md5-password.js'

const md5 = (data: Buffer | string): string => createHash('md5').update(data).digest('hex')

void t.test('known vectors, cross-checked outside Node', (t) => {
  // printf 'secretpostgres' | md5sum -> 53f48b7c4b76a86ce72276c5755f217d
  // printf '53f48b7c4b76a86ce72276c5755f217d\x01\x02\x03\x04' | md5sum -> bb41a296...; same via Python hashlib
  t.equal(md5PasswordResponse('postgres', 'secret', Buffer.from([1, 2, 3, 4])), 'md5bb41a296aab6baccb36ff243a562abff')
  // Python: hashlib.md5(hashlib.md5('pässwörd'.encode() + 'jösé'.encode()).hexdigest().encode() + salt)
  t.equal(
    md5PasswordResponse('jösé', 'pässwörd', Buffer.from([0xff, 0x00, 0x80, 0x7f])),
    'md55233f9b6a3181279c8248e17c8408fb6',
  )
  t.end()
})

void t.test('matches the formula for random inputs', (t) => {
  for (const [user, password] of [
    ['alice', 'correct horse'],
    ['', ''],
    ['ユーザー', 'パスワード'],
  ] as const) {
    const salt = Buffer.from([Math.random() * 256, Math.random() * 256, Math.random() * 256, Math.random() * 256])
    const expected = 'md5' + md5(Buffer.concat([Buffer.from(md5(Buffer.from(password + user, 'utf8'))), salt]))
    t.equal(md5PasswordResponse(user, password, salt), expected, `${user}/${password}`)
  }
  t.end()
})

void t.test('salt must be 4 bytes', (t) => {
  t.throws(() => md5PasswordResponse('u', 'p', Buffer.alloc(3)))
  t.throws(() => md5PasswordResponse('u', 'p', Buffer.alloc(5)))
  t.end()
})
