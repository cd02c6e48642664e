/**
 * The connection_url handling of Vault's SQL connection producer (sdk/database/helper/connutil):
 * {{username}}/{{password}} templating with url.PathEscape, the settings Vault appends for
 * PostgreSQL, and the checks it makes on the URL (a literal password, redaction for reads).
 * Both URL forms pg accepts work: postgresql://user:pw@host:port/db and
 * postgresql://user@/db?host=/socket/dir&port=5432.
 */

/** Go's url.PathEscape: escapes all but unreserved characters and $ & + : = @. */
export function goPathEscape(value: string): string {
  let out = ''
  for (const byte of Buffer.from(value, 'utf8')) {
    const c = String.fromCharCode(byte)
    if (/[\w\-.~$&+:=@]/.test(c)) out += c
    else out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`
  }
  return out
}

export interface UrlCredentials {
  username: string
  password: string
  disableEscaping: boolean
}

/** connutil Init: substitutes the credentials; refuses template variables inside them. */
export function renderConnectionUrl(template: string, credentials: UrlCredentials): string {
  const { username, password, disableEscaping } = credentials
  if ([username, password].some((v) => v.includes('{{username}}') || v.includes('{{password}}'))) {
    throw new Error('username and/or password cannot contain the template variables')
  }
  const escape = (v: string) => (disableEscaping ? v : goPathEscape(v))
  return template.replaceAll('{{username}}', escape(username)).replaceAll('{{password}}', escape(password))
}

/** connutil Connection: Vault's sessions run in UTC and show application_name = 'vault'. */
export function withVaultSessionSettings(url: string): string {
  if (!/^postgres(?:ql)?:\/\//.test(url)) return url
  let out = url + (url.includes('?') ? '&timezone=UTC' : '?timezone=UTC')
  if (!out.includes('application_name')) out += '&application_name=vault'
  return out
}

/** The userinfo of a URL as Go's url.Parse sees it; undefined if there is none or Go would refuse it. */
function userinfoOf(url: string): { start: number; end: number; text: string } | undefined {
  const scheme = /^[A-Z][A-Z0-9+.-]*:\/\//i.exec(url)
  if (!scheme) return undefined
  const authorityEnd = url.slice(scheme[0].length).search(/[/?#]/)
  const authority =
    authorityEnd === -1 ? url.slice(scheme[0].length) : url.slice(scheme[0].length, scheme[0].length + authorityEnd)
  const at = authority.lastIndexOf('@')
  if (at === -1) return undefined
  const text = authority.slice(0, at)
  // net/url's validUserinfo: template braces, spaces etc. make url.Parse fail.
  if (!/^[\w\-.:~!$&'()*+,;=%@]*$/.test(text)) return undefined
  return { start: scheme[0].length, end: scheme[0].length + at, text }
}

/** Whether the URL carries a literal password (Vault then warns on config write). */
export function hasLiteralPassword(url: string): boolean {
  const userinfo = userinfoOf(url)
  return userinfo !== undefined && userinfo.text.includes(':')
}

/** url.Redacted(): the password replaced by "xxxxx"; URLs Go cannot parse are returned as they are. */
export function redactConnectionUrl(url: string): string {
  const userinfo = userinfoOf(url)
  if (userinfo === undefined || !userinfo.text.includes(':')) return url
  const user = userinfo.text.slice(0, userinfo.text.indexOf(':'))
  return `${url.slice(0, userinfo.start)}${user}:xxxxx${url.slice(userinfo.end)}`
}
