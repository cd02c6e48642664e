import { execFileSync, spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ChannelBindingError, tlsServerEndPointHash } from '../../src/pgwire/tls-server-end-point.js'

const hasOpenssl = spawnSync('openssl', ['version']).status === 0

/** Self-signed certificates made by the openssl CLI, as DER. */
function makeCerts(dir: string) {
  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  }
  openssl('genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'rsa.pem')
  openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'p256.pem')
  openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384', '-out', 'p384.pem')
  openssl('genpkey', '-algorithm', 'ED25519', '-out', 'ed25519.pem')
  const cert = (name: string, key: string, ...signing: string[]): Buffer => {
    openssl(
      'req',
      '-x509',
      '-key',
      key,
      '-subj',
      `/CN=${name}`,
      '-days',
      '1',
      '-outform',
      'DER',
      '-out',
      name,
      ...signing,
    )
    return readFileSync(join(dir, name))
  }
  return {
    rsaSha256: cert('rsa-sha256.der', 'rsa.pem', '-sha256'),
    rsaSha384: cert('rsa-sha384.der', 'rsa.pem', '-sha384'),
    rsaSha512: cert('rsa-sha512.der', 'rsa.pem', '-sha512'),
    rsaSha1: cert('rsa-sha1.der', 'rsa.pem', '-sha1'),
    rsaPssSha384: cert('rsa-pss.der', 'rsa.pem', '-sha384', '-sigopt', 'rsa_padding_mode:pss'),
    ecdsaSha256: cert('p256.der', 'p256.pem', '-sha256'),
    ecdsaSha384: cert('p384.der', 'p384.pem', '-sha384'),
    ed25519: cert('ed25519.der', 'ed25519.pem'),
  }
}

void t.test('certificates made by openssl', { skip: hasOpenssl ? false : 'openssl CLI not available' }, (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tls-end-point-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const certs = makeCerts(dir)
  const expected: [keyof typeof certs, string][] = [
    ['rsaSha256', 'sha256'],
    ['rsaSha384', 'sha384'],
    ['rsaSha512', 'sha512'],
    ['rsaSha1', 'sha256'], // SHA-1 is upgraded to SHA-256 (RFC 5929 §4.1)
    ['rsaPssSha384', 'sha384'], // the hash from the RSASSA-PSS parameters
    ['ecdsaSha256', 'sha256'],
    ['ecdsaSha384', 'sha384'],
  ]
  for (const [name, hash] of expected) {
    t.same(tlsServerEndPointHash(certs[name]), createHash(hash).update(certs[name]).digest(), `${name} -> ${hash}`)
  }
  t.throws(() => tlsServerEndPointHash(certs.ed25519), {
    name: 'ChannelBindingError',
    message: /not supported for Ed25519/,
  })

  void t.test('every truncation of a certificate throws ChannelBindingError', (t) => {
    const der = certs.ecdsaSha256
    let unexpected = 0
    for (let length = 0; length < der.length; length++) {
      try {
        tlsServerEndPointHash(der.subarray(0, length))
        unexpected++
      } catch (err) {
        if (!(err instanceof ChannelBindingError)) unexpected++
      }
    }
    t.equal(unexpected, 0)
    t.end()
  })

  void t.test('corrupted certificates either hash or throw ChannelBindingError, nothing else', (t) => {
    let other = 0
    for (let i = 0; i < 2000; i++) {
      const der = Buffer.from(i % 2 ? certs.rsaSha256 : certs.rsaPssSha384)
      for (let flips = 0; flips < 3; flips++) der[Math.floor(Math.random() * 64)] = Math.floor(Math.random() * 256)
      try {
        tlsServerEndPointHash(der)
      } catch (err) {
        if (!(err instanceof ChannelBindingError)) other++
      }
    }
    t.equal(other, 0)
    t.end()
  })

  t.throws(() => tlsServerEndPointHash(Buffer.concat([certs.rsaSha256, Buffer.from([0])])), {
    message: /trailing bytes/,
  })
  t.end()
})

// Hand-built certificates: the reader only looks at the outer structure and signatureAlgorithm.
const der = (tag: number, ...contents: Buffer[]): Buffer => {
  const body = Buffer.concat(contents)
  const length =
    body.length < 0x80 ? Buffer.from([body.length]) : Buffer.from([0x82, body.length >> 8, body.length & 0xff])
  return Buffer.concat([Buffer.from([tag]), length, body])
}
const oid = (dotted: string): Buffer => {
  const [a = 0, b = 0, ...rest] = dotted.split('.').map(Number)
  const bytes = [40 * a + b]
  for (const arc of rest) {
    const septets = [arc & 0x7f]
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) septets.unshift((v & 0x7f) | 0x80)
    bytes.push(...septets)
  }
  return der(0x06, Buffer.from(bytes))
}
const NULL = der(0x05)
const certificate = (algorithm: Buffer): Buffer =>
  der(0x30, der(0x30, der(0x02, Buffer.from([1])), randomBytes(200)), algorithm, der(0x03, Buffer.from([0, 1, 2])))
const algorithmIdentifier = (dotted: string, ...params: Buffer[]): Buffer => der(0x30, oid(dotted), ...params)
const PSS = '1.2.840.113549.1.1.10'
const pssParams = (hashOid: string): Buffer => der(0x30, der(0xa0, algorithmIdentifier(hashOid, NULL)))

void t.test('signature algorithm table', (t) => {
  const cases: [string, string][] = [
    ['1.2.840.113549.1.1.4', 'sha256'], // md5WithRSAEncryption
    ['1.2.840.113549.1.1.5', 'sha256'],
    ['1.2.840.113549.1.1.11', 'sha256'],
    ['1.2.840.113549.1.1.12', 'sha384'],
    ['1.2.840.113549.1.1.13', 'sha512'],
    ['1.2.840.113549.1.1.14', 'sha224'],
    ['1.2.840.10045.4.1', 'sha256'],
    ['1.2.840.10045.4.3.2', 'sha256'],
    ['1.2.840.10045.4.3.3', 'sha384'],
    ['1.2.840.10045.4.3.4', 'sha512'],
  ]
  for (const [dotted, hash] of cases) {
    const cert = certificate(algorithmIdentifier(dotted, NULL))
    t.same(tlsServerEndPointHash(cert), createHash(hash).update(cert).digest(), `${dotted} -> ${hash}`)
  }
  t.throws(() => tlsServerEndPointHash(certificate(algorithmIdentifier('1.3.101.113'))), {
    message: /not supported for Ed448/,
  })
  t.throws(() => tlsServerEndPointHash(certificate(algorithmIdentifier('1.2.3.4.5'))), {
    name: 'ChannelBindingError',
    message: /signature algorithm 1\.2\.3\.4\.5/,
  })
  t.end()
})

void t.test('RSASSA-PSS parameters', (t) => {
  const hashOf = (params: Buffer[]): Buffer => tlsServerEndPointHash(certificate(algorithmIdentifier(PSS, ...params)))
  const sha512Cert = certificate(algorithmIdentifier(PSS, pssParams('2.16.840.1.101.3.4.2.3')))
  t.same(tlsServerEndPointHash(sha512Cert), createHash('sha512').update(sha512Cert).digest())
  const defaults = certificate(algorithmIdentifier(PSS, der(0x30)))
  t.same(tlsServerEndPointHash(defaults), createHash('sha256').update(defaults).digest(), 'default SHA-1, upgraded')
  const sha1 = certificate(algorithmIdentifier(PSS, pssParams('1.3.14.3.2.26')))
  t.same(tlsServerEndPointHash(sha1), createHash('sha256').update(sha1).digest(), 'explicit SHA-1, upgraded')

  const unsupported = /channel binding is not supported for this RSASSA-PSS certificate/
  t.throws(() => hashOf([]), { name: 'ChannelBindingError', message: unsupported }, 'parameters missing')
  t.throws(() => hashOf([NULL]), { message: unsupported }, 'parameters not a SEQUENCE')
  t.throws(() => hashOf([pssParams('1.2.3')]), { message: unsupported }, 'unknown hash')
  t.throws(() => hashOf([der(0x30, der(0xa0, der(0x02, Buffer.from([1]))))]), { message: unsupported }, 'garbage')
  t.throws(() => hashOf([der(0x30, der(0xa0))]), { message: unsupported }, 'empty hashAlgorithm')
  t.end()
})

void t.test('malformed DER throws ChannelBindingError', (t) => {
  const valid = certificate(algorithmIdentifier('1.2.840.10045.4.3.2'))
  const malformed: [string, Buffer][] = [
    ['empty', Buffer.alloc(0)],
    ['one byte', Buffer.from([0x30])],
    ['garbage', randomBytes(300)],
    ['not a SEQUENCE', der(0x04, Buffer.alloc(10))],
    ['length beyond the buffer', Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30, 0x00])],
    ['length of length too large', Buffer.from([0x30, 0x89, 1, 1, 1, 1, 1, 1, 1, 1, 1])],
    ['indefinite length', Buffer.from([0x30, 0x80, 0x30, 0x00, 0x00, 0x00])],
    ['high tag number', Buffer.from([0x3f, 0x01, 0x00])],
    ['empty certificate', der(0x30)],
    ['no signature', der(0x30, der(0x30), algorithmIdentifier('1.2.840.10045.4.3.2'))],
    ['extra element', der(0x30, der(0x30), algorithmIdentifier('1.2.840.10045.4.3.2'), der(0x03), der(0x05))],
    ['empty OID', certificate(der(0x30, der(0x06)))],
    ['truncated OID arc', certificate(der(0x30, der(0x06, Buffer.from([0x2a, 0x86]))))],
    ['huge OID arc', certificate(der(0x30, der(0x06, Buffer.from([0x2a, ...Buffer.alloc(9, 0xff), 0x01]))))],
    ['algorithm not a SEQUENCE', certificate(oid('1.2.840.10045.4.3.2'))],
    ['trailing bytes in the algorithm', certificate(der(0x30, oid('1.2.840.10045.4.3.2'), NULL, NULL))],
    ['truncated', valid.subarray(0, valid.length - 2)],
  ]
  for (const [name, input] of malformed) {
    t.throws(() => tlsServerEndPointHash(input), { name: 'ChannelBindingError' }, name)
  }
  t.end()
})
