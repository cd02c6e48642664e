/**
 * Vault's glob matching (github.com/ryanuber/go-glob, behind strutil.StrListContainsGlob): `*`
 * anywhere in a pattern matches any run of characters, nothing else is special. Leftmost-first
 * matching of the literal parts, as go-glob does: no backtracking, so the time is linear in the
 * pattern and the value (per literal part), unlike a regular expression with several `.*`.
 */

export function glob(pattern: string, value: string): boolean {
  if (pattern === '') return value === ''
  if (pattern === '*') return true
  const parts = pattern.split('*')
  if (parts.length === 1) return value === pattern
  const last = parts.length - 1
  let rest = value
  for (let i = 0; i < last; i++) {
    const at = rest.indexOf(parts[i]!)
    if (i === 0 ? at !== 0 : at < 0) return false
    rest = rest.slice(at + parts[i]!.length)
  }
  return pattern.endsWith('*') || rest.endsWith(parts[last]!)
}

/** strutil.StrListContainsGlob: whether any of the patterns matches. */
export function matchesGlobList(patterns: readonly string[], value: string): boolean {
  return patterns.some((pattern) => glob(pattern, value))
}
