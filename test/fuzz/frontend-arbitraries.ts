// fast-check arbitraries for what a client can send: startup packets and frontend messages, valid
// ones built with pg-protocol's serializer and test/support/wire-builder.ts, then mutated the ways
// a broken or hostile client would (truncated, wrong lengths, unknown types, random bytes).
import fc from 'fast-check'
import { serialize } from 'pg-protocol'
import { BufferList, cancelRequest, gssEncRequest, sslRequest, startupMessage } from '../support/wire-builder.js'

/** SQL a client might send, benign for the test cluster: reads, session state, COPY, errors, and worst cases for the scanners. */
const SQL = fc.oneof(
  fc.constantFrom(
    'select 1',
    'begin',
    'commit',
    'rollback',
    'select pg_sleep(0.001)',
    "set app.tenant = 'x'",
    "select set_config('app.user', '1', false)",
    'prepare fuzz_p as select $1::int',
    'execute fuzz_p(1)',
    'deallocate all',
    'listen fuzz_channel',
    "notify fuzz_channel, 'x'",
    'copy (select generate_series(1, 3)) to stdout',
    'copy pg_temp.none from stdin',
    'select * from no_such_table',
    'select 1/0',
    'discard all',
    'select pg_advisory_lock(1); select pg_advisory_unlock(1)',
    "do $$ begin perform set_config('app.y', '2', false); end $$",
    "select 1 -- set_config('" + '.'.repeat(2000),
  ),
  fc.string({ maxLength: 200 }),
  fc.string({ unit: 'binary', maxLength: 200 }),
)

const NAME = fc.oneof(fc.constant(''), fc.constantFrom('fuzz_p', 's1', 'portal'), fc.string({ maxLength: 20 }))

/** One valid frontend message, as a client in the relay phase sends it. */
export const validMessage: fc.Arbitrary<Buffer> = fc
  .oneof(
    { weight: 4, arbitrary: SQL.map((text) => serialize.query(text)) },
    {
      weight: 3,
      arbitrary: fc
        .record({ name: NAME, text: SQL, types: fc.array(fc.constantFrom(0, 23, 25), { maxLength: 3 }) })
        .map((parse) => serialize.parse(parse)),
    },
    {
      weight: 3,
      arbitrary: fc
        .record({
          portal: NAME,
          statement: NAME,
          values: fc.array(fc.oneof(fc.string(), fc.constant(null)), { maxLength: 3 }),
        })
        .map((bind) => serialize.bind(bind)),
    },
    {
      weight: 2,
      arbitrary: fc
        .record({ type: fc.constantFrom('S' as const, 'P' as const), name: NAME })
        .map((d) => serialize.describe(d)),
    },
    { weight: 2, arbitrary: fc.record({ portal: NAME, rows: fc.nat(5) }).map((e) => serialize.execute(e)) },
    {
      weight: 1,
      arbitrary: fc
        .record({ type: fc.constantFrom('S' as const, 'P' as const), name: NAME })
        .map((c) => serialize.close(c)),
    },
    { weight: 4, arbitrary: fc.constant(null).map(() => serialize.sync()) },
    { weight: 1, arbitrary: fc.constant(null).map(() => serialize.flush()) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 100 }).map((data) => serialize.copyData(Buffer.from(data))) },
    { weight: 1, arbitrary: fc.constant(null).map(() => serialize.copyDone()) },
    { weight: 1, arbitrary: fc.string({ maxLength: 50 }).map((reason) => serialize.copyFail(reason)) },
    {
      weight: 1,
      // FunctionCall (F): pg-protocol has no encoder for it.
      arbitrary: fc
        .record({ oid: fc.nat(), args: fc.array(fc.uint8Array({ maxLength: 8 }), { maxLength: 3 }) })
        .map(({ oid, args }) => {
          const list = new BufferList().int32(oid).int16(0).int16(args.length)
          for (const arg of args) list.int32(arg.length).bytes(Buffer.from(arg))
          return list.int16(0).message('F')
        }),
    },
    // Authentication answers the proxy never asked for.
    { weight: 1, arbitrary: fc.string({ maxLength: 30 }).map((password) => serialize.password(password)) },
  )
  .map((message) => Buffer.from(message)) // pg-protocol reuses its buffers: take a copy before any mutation

/** A message changed the way a broken client or an attacker would change it. */
const mutated: fc.Arbitrary<Buffer> = fc.oneof(
  // Cut short: the rest never comes (or the next message's bytes are read as its body).
  fc.tuple(validMessage, fc.nat()).map(([m, at]) => m.subarray(0, at % m.length)),
  // A length field that lies: too small, negative, a little more, or far past every limit.
  fc
    .tuple(
      validMessage,
      fc.oneof(
        fc.integer({ min: -10, max: 4 }),
        fc.integer({ min: 5, max: 20_000 }),
        fc.constantFrom(0x3fff_ffff, 0x4000_0000, 0x7fff_ffff, -1, 10_001),
        fc.integer(),
      ),
    )
    .map(([m, length]) => {
      const copy = Buffer.from(m)
      copy.writeInt32BE(length | 0, 1)
      return copy
    }),
  // Another type byte, known or not.
  fc.tuple(validMessage, fc.integer({ min: 0, max: 255 })).map(([m, type]) => {
    const copy = Buffer.from(m)
    copy[0] = type
    return copy
  }),
  // A byte of the body flipped.
  fc.tuple(validMessage, fc.nat(), fc.integer({ min: 1, max: 255 })).map(([m, at, xor]) => {
    const copy = Buffer.from(m)
    const i = 5 + (at % Math.max(1, copy.length - 5))
    if (i < copy.length) copy[i] = (copy[i] as number) ^ xor
    return copy
  }),
  // A header announcing a huge message, and a little of it.
  fc
    .tuple(
      fc.constantFrom(0x51, 0x50, 0x42, 0x64, 0x53, 0x48),
      fc.integer({ min: 10_000, max: 0x7fff_ffff }),
      fc.uint8Array({ maxLength: 64 }),
    )
    .map(([type, length, body]) => Buffer.concat([Buffer.from([type]), int32(length), Buffer.from(body)])),
  // Plain noise.
  fc.uint8Array({ minLength: 1, maxLength: 300 }).map((bytes) => Buffer.from(bytes)),
)

/** What a client sends after its startup packet: mostly valid messages, some mutated ones. */
export const clientMessages: fc.Arbitrary<Buffer[]> = fc.array(
  fc.oneof({ weight: 6, arbitrary: validMessage }, { weight: 1, arbitrary: mutated }),
  // size 'max': lengths spread over the whole range, not fast-check's small default.
  { minLength: 1, maxLength: 100, size: 'max' },
)

const PARAMETER_NAME = fc.oneof(
  fc.constantFrom(
    'user',
    'database',
    'options',
    'application_name',
    'client_encoding',
    'replication',
    'role',
    '_pq_.x',
    'DateStyle',
  ),
  fc.string({ maxLength: 20 }),
)

/** A startup-phase packet that may be anything: a fair StartupMessage, another request code, or nonsense. */
export const startupPacket: fc.Arbitrary<Buffer> = fc.oneof(
  fc
    .record({
      params: fc.dictionary(PARAMETER_NAME, fc.string({ maxLength: 40 }), { maxKeys: 6 }),
      version: fc.oneof(fc.constantFrom(0x30000, 0x30002, 0x20000, 0x40000, 80877103, 80877102), fc.integer()),
    })
    .map(({ params, version }) => startupMessage(params, version)),
  fc.constantFrom(sslRequest(), gssEncRequest()),
  fc
    .tuple(fc.integer(), fc.uint8Array({ minLength: 0, maxLength: 8 }))
    .map(([pid, key]) => cancelRequest(pid, Buffer.from(key))),
  // A length that lies, short or long.
  fc
    .tuple(fc.integer(), fc.uint8Array({ maxLength: 64 }))
    .map(([length, body]) => Buffer.concat([int32(length), Buffer.from(body)])),
  fc.uint8Array({ minLength: 1, maxLength: 200 }).map((bytes) => Buffer.from(bytes)),
)

/** One connection's worth: a good startup then messages, or a random startup packet (and maybe more). */
export interface Scenario {
  /** The startup packet; undefined means a valid StartupMessage that logs in. */
  startup: Buffer | undefined
  messages: Buffer[]
}

export const scenario: fc.Arbitrary<Scenario> = fc.oneof(
  { weight: 4, arbitrary: clientMessages.map((messages) => ({ startup: undefined, messages })) },
  {
    weight: 1,
    arbitrary: fc.record({ startup: startupPacket, messages: fc.array(validMessage, { maxLength: 3 }) }),
  },
)

function int32(n: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeInt32BE(n | 0)
  return b
}
