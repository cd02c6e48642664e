/** Reading the ops server from tests: one GET, and single values out of the Prometheus text. */

export interface OpsReply {
  status: number
  contentType: string
  body: string
}

export async function opsGet(port: number, path: string, method = 'GET'): Promise<OpsReply> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { method })
  return { status: res.status, contentType: res.headers.get('content-type') ?? '', body: await res.text() }
}

/**
 * The value of the sample `name` whose labels include all of `labels`; undefined when absent.
 * Parsed independently of prom-client, so the exposition format itself is checked too.
 */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const match = /^([a-z_:][\w:]*)(?:\{(.*)\})? (\S+)$/i.exec(line)
    if (!match || match[1] !== name) continue
    const found = new Map<string, string>()
    for (const m of (match[2] ?? '').matchAll(/\b([a-z_]\w*)="((?:[^"\\]|\\.)*)"/gi))
      found.set(m[1] ?? '', m[2] ?? '')
    if (Object.entries(labels).every(([k, v]) => found.get(k) === v)) return Number(match[3])
  }
  return undefined
}
