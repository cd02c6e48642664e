// Wire constants from the PostgreSQL protocol docs and src/include/libpq/protocol.h.
// "Frontend" and "backend" are protocol roles: the same byte means different things per direction.

/** Request codes of the untyped packets a frontend may send first. */
export const StartupCode = {
  Protocol30: 0x0003_0000,
  Protocol32: 0x0003_0002,
  SSLRequest: 80877103, // 1234 << 16 | 5679
  GSSENCRequest: 80877104, // 1234 << 16 | 5680
  CancelRequest: 80877102, // 1234 << 16 | 5678
} as const

/** Body of a startup-phase packet may be at most this long (MAX_STARTUP_PACKET_LENGTH). */
export const MAX_STARTUP_PACKET_BODY = 10_000

/** Messages a frontend (client) sends after startup. */
export const FrontendCode = {
  Bind: 0x42, // B
  Close: 0x43, // C
  Describe: 0x44, // D
  Execute: 0x45, // E
  FunctionCall: 0x46, // F
  Flush: 0x48, // H
  Parse: 0x50, // P
  Query: 0x51, // Q
  Sync: 0x53, // S
  Terminate: 0x58, // X
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyFail: 0x66, // f
  Password: 0x70, // p (also SASLInitialResponse / SASLResponse)
} as const

/** Messages a backend (server) sends. */
export const BackendCode = {
  Authentication: 0x52, // R
  BackendKeyData: 0x4b, // K
  ReadyForQuery: 0x5a, // Z
  ParameterStatus: 0x53, // S
  ErrorResponse: 0x45, // E
  NoticeResponse: 0x4e, // N
  NotificationResponse: 0x41, // A
  NegotiateProtocolVersion: 0x76, // v
  CommandComplete: 0x43, // C
  CopyInResponse: 0x47, // G
  CopyOutResponse: 0x48, // H
  CopyBothResponse: 0x57, // W
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  DataRow: 0x44, // D
} as const

export const AuthCode = {
  Ok: 0,
  KerberosV5: 2,
  CleartextPassword: 3,
  MD5Password: 5,
  GSS: 7,
  GSSContinue: 8,
  SSPI: 9,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const

/** The SQLSTATEs the proxy itself produces (src/backend/utils/errcodes.txt). */
export const SqlState = {
  ProtocolViolation: '08P01',
  ConnectionFailure: '08006',
  UnableToEstablishConnection: '08001',
  ServerRejectedConnection: '08004',
  FeatureNotSupported: '0A000',
  InvalidAuthorizationSpecification: '28000',
  InvalidPassword: '28P01',
  TooManyConnections: '53300',
  AdminShutdown: '57P01',
  CannotConnectNow: '57P03',
  QueryCanceled: '57014',
  InsufficientPrivilege: '42501',
  InvalidParameterValue: '22023',
  InternalError: 'XX000',
} as const
export type SqlState = (typeof SqlState)[keyof typeof SqlState]

/** Transaction status carried by ReadyForQuery. */
export type TransactionStatus = 'I' | 'T' | 'E'
