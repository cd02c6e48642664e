/**
 * Time formats Vault writes. The dev Vault runs in UTC, as Vault does in its containers; a Vault
 * started in another zone would write that zone's offset instead.
 */

/** Go's time.RFC3339Nano for a UTC time: fraction without trailing zeros, "Z" suffix. */
export function rfc3339Nano(ms: number): string {
  const iso = new Date(ms).toISOString() // 2025-01-31T12:00:00.120Z
  const dot = iso.lastIndexOf('.')
  let end = iso.length - 1 // the Z
  while (end > dot + 1 && iso[end - 1] === '0') end--
  return end === dot + 1 ? `${iso.slice(0, dot)}Z` : `${iso.slice(0, end)}Z`
}

/** The PostgreSQL plugin's {{expiration}}: Go layout "2006-01-02 15:04:05-0700". */
export function pgExpiration(ms: number): string {
  const iso = new Date(ms).toISOString()
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}+0000`
}

export function unixSeconds(ms: number): number {
  return Math.floor(ms / 1000)
}
