import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto'
import t from 'tap'
import {
  chooseScramMechanism,
  ScramClient,
  ScramError,
  ScramKeyCache,
  type ScramClientOptions,
  type ScramMechanism,
} from '../../src/pgwire/scram-client.js'

// RFC 7677 §3 test vector (server-final cross-checked with Python hashlib/hmac and other SCRAM libraries).
const RFC = {
  password: 'pencil',
  clientNonce: 'rOprNGfwEbeRWgbNEkqO',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal:
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
}
const NONCE = 'clientNonce0123456789'
const SALT = Buffer.from('0123456789abcdef').toString('base64')

function client(options: Partial<ScramClientOptions> = {}): ScramClient {
  return new ScramClient({
    password: 'secret',
    mechanism: 'SCRAM-SHA-256',
    keyCache: new ScramKeyCache(),
    clientNonce: NONCE,
    ...options,
  })
}

/** A client that has sent client-first, ready for a server-first. */
function started(options: Partial<ScramClientOptions> = {}): ScramClient {
  const c = client(options)
  c.clientFirstMessage()
  return c
}

const serverFirst = (attrs = `r=${NONCE}server,s=${SALT},i=4096`): Buffer => Buffer.from(attrs)

/**
 * An independent server side (RFC 5802 §3): checks the client proof and returns server-final.
 * `preparedPassword` is the password after SASLprep, as the server stored it.
 */
function serverVerify(preparedPassword: string, clientFirst: Buffer, first: Buffer, clientFinal: Buffer): string {
  const [, salt = '', iterations = ''] = first.toString().split(',')
  const salted = pbkdf2Sync(
    preparedPassword,
    Buffer.from(salt.slice(2), 'base64'),
    Number(iterations.slice(2)),
    32,
    'sha256',
  )
  const hmac = (key: Buffer, data: string | Buffer): Buffer => createHmac('sha256', key).update(data).digest()
  const clientKey = hmac(salted, 'Client Key')
  const storedKey = createHash('sha256').update(clientKey).digest()
  const finalText = clientFinal.toString()
  const proofAt = finalText.lastIndexOf(',p=')
  const bare = clientFirst.toString().replace(/^(?:n|y|p=[^,]*),[^,]*,/, '')
  const authMessage = `${bare},${first.toString()},${finalText.slice(0, proofAt)}`
  const proof = Buffer.from(finalText.slice(proofAt + 3), 'base64')
  const signature = hmac(storedKey, authMessage)
  const recoveredClientKey = Buffer.from(proof.map((byte, i) => byte ^ (signature[i] ?? 0)))
  if (!createHash('sha256').update(recoveredClientKey).digest().equals(storedKey)) throw new Error('bad proof')
  return `v=${hmac(hmac(salted, 'Server Key'), authMessage).toString('base64')}`
}

void t.test('RFC 7677 test vector', async (t) => {
  const c = new ScramClient({
    password: RFC.password,
    mechanism: 'SCRAM-SHA-256',
    keyCache: new ScramKeyCache(),
    clientNonce: RFC.clientNonce,
    scramUsername: 'user',
  })
  t.equal(c.clientFirstMessage().toString(), `n,,n=user,r=${RFC.clientNonce}`)
  const final = await c.clientFinalMessage(Buffer.from(RFC.serverFirst))
  t.equal(final.toString(), RFC.clientFinal)
  t.notOk(c.isComplete, 'not complete before the server signature is checked')
  c.verifyServerFinal(Buffer.from(RFC.serverFinal))
  t.ok(c.isComplete)
})

void t.test('client-first-message as libpq sends it', (t) => {
  const a = new ScramClient({ password: 'x', mechanism: 'SCRAM-SHA-256', keyCache: new ScramKeyCache() })
  const b = new ScramClient({ password: 'x', mechanism: 'SCRAM-SHA-256', keyCache: new ScramKeyCache() })
  const first = a.clientFirstMessage().toString()
  t.match(first, /^n,,n=,r=[A-Za-z0-9+/]{24}$/, 'empty username, 18 random bytes of base64 nonce')
  t.not(first, b.clientFirstMessage().toString(), 'nonces are random')
  t.equal(client({ scramUsername: 'a,b=c' }).clientFirstMessage().toString(), `n,,n=a=2Cb=3Dc,r=${NONCE}`)
  t.end()
})

void t.test('full exchange against an independent server, with a SASLprep-mapped password', async (t) => {
  const c = client({ password: 'I\u00ADX' }) // soft hyphen is mapped to nothing: the server stored "IX"
  const first = c.clientFirstMessage()
  const sFirst = serverFirst()
  const final = await c.clientFinalMessage(sFirst)
  t.match(final.toString(), new RegExp(`^c=biws,r=${NONCE}server,p=[A-Za-z0-9+/]{43}=$`))
  c.verifyServerFinal(Buffer.from(serverVerify('IX', first, sFirst, final)))
  t.ok(c.isComplete)
})

void t.test('SCRAM-SHA-256-PLUS encodes the GS2 header and channel binding data in c=', async (t) => {
  const cbind = randomBytes(32)
  const c = client({ mechanism: 'SCRAM-SHA-256-PLUS', channelBindingData: cbind })
  const first = c.clientFirstMessage()
  t.equal(first.toString(), `p=tls-server-end-point,,n=,r=${NONCE}`)
  const sFirst = serverFirst()
  const final = await c.clientFinalMessage(sFirst)
  const cAttr = /^c=([^,]+),/.exec(final.toString())?.[1] ?? ''
  t.same(Buffer.from(cAttr, 'base64'), Buffer.concat([Buffer.from('p=tls-server-end-point,,'), cbind]))
  c.verifyServerFinal(Buffer.from(serverVerify('secret', first, sFirst, final)))
  t.ok(c.isComplete)

  t.throws(() => client({ mechanism: 'SCRAM-SHA-256-PLUS' }), { name: 'ScramError' }, 'PLUS needs binding data')
  t.throws(() => client({ mechanism: 'SCRAM-SHA-256-PLUS', channelBindingData: Buffer.alloc(0) }), {
    name: 'ScramError',
  })
  const plain = client({ channelBindingData: cbind }) // binding data is ignored without PLUS
  t.equal(plain.clientFirstMessage().toString(), `n,,n=,r=${NONCE}`)
})

void t.test(
  "the GS2 flag is libpq's: y when the client could bind but the server offered no PLUS, n otherwise",
  async (t) => {
    // c= carries the GS2 header too (RFC 5802 §7): "biws" is base64("n,,"), "eSws" is base64("y,,").
    for (const [bindingSupported, header, c] of [
      [true, 'y,,', 'eSws'],
      [false, 'n,,', 'biws'],
      [undefined, 'n,,', 'biws'],
    ] as const) {
      const scram = client({ bindingSupported })
      const first = scram.clientFirstMessage()
      t.equal(first.toString(), `${header}n=,r=${NONCE}`, `bindingSupported ${bindingSupported}: client-first`)
      const sFirst = serverFirst()
      const final = await scram.clientFinalMessage(sFirst)
      t.match(final.toString(), new RegExp(`^c=${c},r=`), `bindingSupported ${bindingSupported}: c=`)
      // The proof covers the header: the server verifies it with the same AuthMessage.
      scram.verifyServerFinal(Buffer.from(serverVerify('secret', first, sFirst, final)))
      t.ok(scram.isComplete)
      t.notOk(scram.isChannelBound, 'plain SCRAM never counts as channel bound')
    }
    const plus = client({
      mechanism: 'SCRAM-SHA-256-PLUS',
      channelBindingData: randomBytes(32),
      bindingSupported: true,
    })
    t.match(plus.clientFirstMessage().toString(), /^p=tls-server-end-point,,/, 'PLUS ignores bindingSupported')
  },
)

void t.test('isChannelBound only after a verified SCRAM-SHA-256-PLUS exchange', async (t) => {
  const plus = client({ mechanism: 'SCRAM-SHA-256-PLUS', channelBindingData: randomBytes(32) })
  const first = plus.clientFirstMessage()
  t.notOk(plus.isChannelBound, 'not after client-first')
  const sFirst = serverFirst()
  const final = await plus.clientFinalMessage(sFirst)
  t.notOk(plus.isChannelBound, 'not before the server signature')
  plus.verifyServerFinal(Buffer.from(serverVerify('secret', first, sFirst, final)))
  t.ok(plus.isChannelBound, 'after the server signature verified')

  const forged = client({ mechanism: 'SCRAM-SHA-256-PLUS', channelBindingData: randomBytes(32) })
  forged.clientFirstMessage()
  await forged.clientFinalMessage(serverFirst())
  t.throws(() => forged.verifyServerFinal(Buffer.from(`v=${randomBytes(32).toString('base64')}`)), {
    name: 'ScramError',
  })
  t.notOk(forged.isChannelBound, 'not after a wrong server signature')
})

void t.test(
  'the AuthMessage uses the server-first bytes as received, even if the caller reuses its buffer',
  async (t) => {
    const c = client()
    const first = c.clientFirstMessage()
    const sFirst = serverFirst()
    const pending = c.clientFinalMessage(sFirst)
    const original = Buffer.from(sFirst)
    sFirst.fill(0x41)
    const final = await pending
    c.verifyServerFinal(Buffer.from(serverVerify('secret', first, original, final)))
    t.ok(c.isComplete)
  },
)

void t.test('server signature checks', async (t) => {
  const finished = async (): Promise<ScramClient> => {
    const c = started()
    await c.clientFinalMessage(serverFirst())
    return c
  }
  const wrong = await finished()
  t.throws(() => wrong.verifyServerFinal(Buffer.from(`v=${randomBytes(32).toString('base64')}`)), {
    name: 'ScramError',
    message: /server signature mismatch/,
  })
  t.notOk(wrong.isComplete)
  t.throws(() => wrong.verifyServerFinal(Buffer.from('v=AAAA')), { message: /out of order/ }, 'no second try')

  const short = await finished()
  t.throws(() => short.verifyServerFinal(Buffer.from('v=AAAA')), { message: /server signature mismatch/ })

  const rejected = await finished()
  t.throws(() => rejected.verifyServerFinal(Buffer.from('e=invalid-proof')), {
    name: 'ScramError',
    message: /rejected SCRAM authentication: invalid-proof/,
  })
  t.notOk(rejected.isComplete)

  for (const bad of ['', 'x=1', 'v=', 'v=not base64!', 'v=AAAA,', Buffer.alloc(5000, 0x41).toString()]) {
    const c = await finished()
    t.throws(() => c.verifyServerFinal(Buffer.from(bad)), { name: 'ScramError' }, `rejects ${bad.slice(0, 20)}`)
    t.notOk(c.isComplete)
  }
})

void t.test('server-first-message validation', async (t) => {
  const cases: [string, string | Buffer, RegExp][] = [
    ['nonce not extending ours', `r=someoneElse,s=${SALT},i=4096`, /does not extend/],
    ['nonce equal to ours', `r=${NONCE},s=${SALT},i=4096`, /does not extend/],
    ['nonce with a non-printable', `r=${NONCE}\u00e9,s=${SALT},i=4096`, /invalid nonce/],
    ['nonce too long', `r=${NONCE}${'x'.repeat(1100)},s=${SALT},i=4096`, /invalid nonce/],
    ['iterations 0', `r=${NONCE}s,s=${SALT},i=0`, /iteration count/],
    ['iterations negative', `r=${NONCE}s,s=${SALT},i=-1`, /iteration count/],
    ['iterations non-numeric', `r=${NONCE}s,s=${SALT},i=abc`, /iteration count/],
    ['iterations with suffix', `r=${NONCE}s,s=${SALT},i=4096x`, /iteration count/],
    ['iterations huge', `r=${NONCE}s,s=${SALT},i=99999999999999999999`, /iteration count/],
    ['iterations above the cap', `r=${NONCE}s,s=${SALT},i=1000001`, /more than the limit/],
    ['salt not base64', `r=${NONCE}s,s=!!!!,i=4096`, /not valid base64/],
    ['salt badly padded', `r=${NONCE}s,s=abc,i=4096`, /not valid base64/],
    ['salt empty', `r=${NONCE}s,s=,i=4096`, /expected attribute "s="/],
    ['attributes out of order', `s=${SALT},r=${NONCE}s,i=4096`, /expected attribute "r="/],
    ['missing iterations', `r=${NONCE}s,s=${SALT}`, /expected attribute "i="/],
    ['mandatory extension', `m=ext,r=${NONCE}s,s=${SALT},i=4096`, /unsupported SCRAM extension/],
    ['trailing comma', `r=${NONCE}s,s=${SALT},i=4096,`, /trailing data/],
    ['NUL byte', `r=${NONCE}s,s=${SALT},i=4096\0`, /NUL/],
    ['invalid UTF-8', Buffer.from([0x72, 0x3d, 0xff, 0xfe]), /UTF-8/],
    ['oversized', Buffer.alloc(4097, 0x41), /too long/],
  ]
  for (const [name, message, pattern] of cases) {
    const c = started()
    await t.rejects(c.clientFinalMessage(Buffer.from(message)), { name: 'ScramError', message: pattern }, name)
    t.notOk(c.isComplete)
    t.throws(() => c.verifyServerFinal(Buffer.from('v=AAAA')), { message: /out of order/ }, `${name}: exchange over`)
  }

  const withExtension = started()
  await t.resolves(withExtension.clientFinalMessage(serverFirst(`r=${NONCE}s,s=${SALT},i=4096,x=ignored`)))

  const lowCap = started({ maxIterations: 4095 })
  await t.rejects(lowCap.clientFinalMessage(serverFirst()), { message: /more than the limit of 4095/ })
})

void t.test('error messages never carry the password', async (t) => {
  const password = 'hunter2-very-secret'
  const messages: string[] = []
  for (const message of [`r=${NONCE}s,s=${SALT},i=0`, `r=x,s=${SALT},i=1`, 'e=' + password]) {
    try {
      await started({ password }).clientFinalMessage(Buffer.from(message))
    } catch (err) {
      messages.push(String(err))
    }
  }
  const c = started({ password })
  await c.clientFinalMessage(serverFirst())
  try {
    c.verifyServerFinal(Buffer.from('v=AAAA'))
  } catch (err) {
    messages.push(String(err))
  }
  t.equal(messages.length, 4)
  for (const message of messages) t.notMatch(message, /hunter2/)
})

void t.test('calls out of order are refused', async (t) => {
  const c = client()
  await t.rejects(c.clientFinalMessage(serverFirst()), { name: 'ScramError', message: /out of order/ })
  const d = client()
  t.throws(() => d.verifyServerFinal(Buffer.from('v=AAAA')), { message: /out of order/ })
  d.clientFirstMessage()
  t.throws(() => d.clientFirstMessage(), { message: /out of order/ })
  const pending = d.clientFinalMessage(serverFirst())
  await t.rejects(d.clientFinalMessage(serverFirst()), { message: /out of order/ }, 'no concurrent second final')
  await pending
})

void t.test('option validation', (t) => {
  t.throws(() => client({ clientNonce: 'has,comma' }), RangeError)
  t.throws(() => client({ clientNonce: '' }), RangeError)
  t.throws(() => client({ clientNonce: 'x'.repeat(1024) }), RangeError)
  t.throws(() => client({ maxIterations: 0 }), RangeError)
  t.throws(() => client({ maxIterations: 1.5 }), RangeError)
  t.throws(() => new ScramKeyCache(0), RangeError)
  t.end()
})

void t.test('key cache: repeat logins skip PBKDF2', async (t) => {
  const cache = new ScramKeyCache()
  const run = async (password: string, salt = SALT): Promise<string> => {
    const c = started({ password, keyCache: cache })
    return (await c.clientFinalMessage(serverFirst(`r=${NONCE}s,s=${salt},i=4096`))).toString()
  }
  const first = await run('secret')
  t.equal(cache.derivationCount, 1)
  t.equal(await run('secret'), first, 'same result from the cache')
  t.equal(cache.derivationCount, 1, 'second login did not run PBKDF2')
  t.equal(cache.size, 1)

  await run('secret', Buffer.from('other salt').toString('base64'))
  await run('other password')
  t.equal(cache.derivationCount, 3, 'salt and password are part of the key')
  t.equal(cache.size, 3)

  cache.forgetPassword('secret')
  t.equal(cache.size, 1, 'both entries of the retired password are gone')
  await run('other password')
  t.equal(cache.derivationCount, 3, 'the other password is still cached')
  cache.clear()
  t.equal(cache.size, 0)
})

void t.test('key cache: derive results match PBKDF2 and are the caller own copies', async (t) => {
  const cache = new ScramKeyCache()
  const salt = Buffer.from('salt')
  const keys = await cache.derive('pencil', salt, 10)
  const salted = pbkdf2Sync('pencil', salt, 10, 32, 'sha256')
  t.same(keys.clientKey, createHmac('sha256', salted).update('Client Key').digest())
  t.same(keys.serverKey, createHmac('sha256', salted).update('Server Key').digest())
  keys.clientKey.fill(0)
  const again = await cache.derive('pencil', salt, 10)
  t.same(again.clientKey, createHmac('sha256', salted).update('Client Key').digest(), 'cached keys unharmed')
  await t.rejects(cache.derive('pencil', salt, 0), { name: 'ScramError' })
})

void t.test('key cache: concurrent derivations share one PBKDF2 run', async (t) => {
  const cache = new ScramKeyCache()
  const salt = Buffer.from('salt')
  const results = await Promise.all([1, 2, 3].map(() => cache.derive('pw', salt, 4096)))
  t.equal(cache.derivationCount, 1)
  t.equal(cache.size, 1)
  for (const keys of results) t.same(keys, results[0])
})

void t.test('key cache: bounded, least recently used evicted first', async (t) => {
  const cache = new ScramKeyCache(2)
  const salt = Buffer.from('salt')
  await cache.derive('a', salt, 1)
  await cache.derive('b', salt, 1)
  await cache.derive('a', salt, 1) // a is now the most recently used
  await cache.derive('c', salt, 1) // evicts b
  t.equal(cache.size, 2)
  t.equal(cache.derivationCount, 3)
  await cache.derive('a', salt, 1)
  t.equal(cache.derivationCount, 3, 'a survived')
  await cache.derive('b', salt, 1)
  t.equal(cache.derivationCount, 4, 'b was evicted')
})

void t.test('chooseScramMechanism follows libpq (pg_SASL_init)', (t) => {
  const both = ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']
  const plainOnly = ['SCRAM-SHA-256']
  const plusOnly = ['SCRAM-SHA-256-PLUS']
  const matrix: [string[], boolean, 'prefer' | 'require' | 'disable', ScramMechanism | RegExp][] = [
    [both, true, 'prefer', 'SCRAM-SHA-256-PLUS'],
    [both, true, 'require', 'SCRAM-SHA-256-PLUS'],
    [both, true, 'disable', 'SCRAM-SHA-256'],
    // PostgreSQL offers PLUS only over TLS: an offer without TLS means TLS was stripped on the way.
    [both, false, 'prefer', /SCRAM-SHA-256-PLUS authentication over a connection without TLS/],
    [both, false, 'disable', /SCRAM-SHA-256-PLUS authentication over a connection without TLS/],
    [both, false, 'require', /SCRAM-SHA-256-PLUS authentication over a connection without TLS/],
    [plainOnly, true, 'prefer', 'SCRAM-SHA-256'],
    [plainOnly, true, 'require', /channel binding is required, but the server did not offer SCRAM-SHA-256-PLUS/],
    [plainOnly, true, 'disable', 'SCRAM-SHA-256'],
    [plainOnly, false, 'prefer', 'SCRAM-SHA-256'],
    [plainOnly, false, 'require', /channel binding is required, but the connection does not use TLS/],
    [plusOnly, true, 'prefer', 'SCRAM-SHA-256-PLUS'],
    [plusOnly, true, 'disable', /channel binding is disabled/],
    [['OAUTHBEARER'], true, 'prefer', /no supported SASL mechanism \(offered: OAUTHBEARER\)/],
    [['OAUTHBEARER'], true, 'require', /channel binding is required/],
    [[], false, 'prefer', /offered: none/],
  ]
  for (const [offered, tls, mode, expected] of matrix) {
    const name = `${offered.join('+') || 'nothing'}, ${tls ? 'TLS' : 'no TLS'}, ${mode}`
    if (typeof expected === 'string') t.equal(chooseScramMechanism(offered, tls, mode), expected, name)
    else t.throws(() => chooseScramMechanism(offered, tls, mode), { name: 'ScramError', message: expected }, name)
  }
  t.ok(new ScramError('x') instanceof Error)
  t.end()
})

void t.test('PBKDF2 runs off the event loop: a timer fires while a costly derivation is under way', async (t) => {
  const order: string[] = []
  const timer = new Promise<void>((resolve) =>
    setTimeout(() => {
      order.push('timer')
      resolve()
    }, 0),
  )
  // 300k iterations take well over a timer tick; run on the event loop, they would finish first.
  const derived = new ScramKeyCache().derive('pencil', randomBytes(16), 300_000).then(() => order.push('derived'))
  await Promise.all([timer, derived])
  t.same(order, ['timer', 'derived'])
})
