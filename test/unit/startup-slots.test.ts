import { once } from 'node:events'
import { createServer, connect, type Socket } from 'node:net'
import t from 'tap'
import { StartupSlots } from '../../src/proxy/startup-slots.js'
import { parseMessages, errorFieldsOf } from '../support/wire-builder.js'

/** A connected pair: the server side (what StartupSlots sees) and the client side. */
async function pair(): Promise<{ server: Socket; client: Socket; close: () => void }> {
  const listener = createServer()
  listener.listen(0, '127.0.0.1')
  await once(listener, 'listening')
  const accepted = once(listener, 'connection') as Promise<[Socket]>
  const address = listener.address() as { port: number }
  const client = connect({ host: '127.0.0.1', port: address.port })
  client.on('error', () => {})
  const [server] = await accepted
  return { server, client, close: () => listener.close() }
}

void t.test('slots: taken up to the limit, released once however often release is called', async (t) => {
  const slots = new StartupSlots(2)
  const a = slots.take()
  const b = slots.take()
  t.ok(a && b)
  t.equal(slots.take(), undefined, 'the third is refused')
  a!()
  a!()
  t.equal(slots.inUse, 1, 'a double release frees one slot')
  const c = slots.take()
  t.ok(c, 'the freed slot is taken again')
  t.equal(slots.take(), undefined)
  b!()
  c!()
  t.equal(slots.inUse, 0)
})

void t.test('refuse: one FATAL 53300 without reading; the first refusal of a run is reported', async (t) => {
  const slots = new StartupSlots(1)
  const release = slots.take()!
  const one = await pair()
  const two = await pair()
  t.teardown(() => {
    one.close()
    two.close()
  })
  t.equal(slots.refuse(one.server), true, 'the first refusal is worth a warning')
  t.equal(slots.refuse(two.server), false, 'the next one in the same run is not')
  let received = Buffer.alloc(0)
  one.client.on('data', (d: Buffer) => (received = Buffer.concat([received, d])))
  await once(one.client, 'close')
  const messages = parseMessages(received)
  t.same(
    messages.map((m) => m.type),
    ['E'],
  )
  t.match(errorFieldsOf(messages[0]!.body), { S: 'FATAL', C: '53300' })
  release()
  const three = await pair()
  t.teardown(() => three.close())
  slots.take()
  t.equal(slots.refuse(three.server), true, 'after a slot was freed, a new run is reported again')
  two.client.destroy()
  three.client.destroy()
})
