//! WebSocket close codes the gateway sends, and what each means for a
//! client. docs/protocol.md lists the same table; clients decide from the
//! code whether to reconnect.

/// Normal closure: the server or client ended the session on purpose.
pub const NORMAL: u16 = 1000;
/// Going away: the client stayed silent for two ping intervals (stale
/// connection cleanup). Reconnect.
pub const GOING_AWAY: u16 = 1001;
/// Protocol error: the client broke RFC 6455 framing rules.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Unsupported data: a binary frame on `pubsub.v1.json` or a text frame on
/// `pubsub.v1.proto`.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// Invalid frame payload: a text frame that is not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Policy violation.
pub const POLICY: u16 = 1008;
/// Message too big: an inbound message or frame over `--max-message-size`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// Internal error on the server.
pub const INTERNAL_ERROR: u16 = 1011;
/// Service restart: the node is draining. Reconnect (to another node).
pub const SERVICE_RESTART: u16 = 1012;
/// Try again later: the node is overloaded. Reconnect after a backoff.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// Unauthorized: the token is missing, invalid or expired (with
/// authentication on). Get a new token before reconnecting.
pub const UNAUTHORIZED: u16 = 4001;
/// Forbidden: the connection tried something its identity may never do
/// (refreshing with another user's token). Do not reconnect unchanged.
pub const FORBIDDEN: u16 = 4003;
/// Disconnected by a backend (`POST /api/disconnect` with `code` 4010):
/// reconnect after the usual backoff (to pick up a new token, or another
/// node).
pub const DISCONNECTED: u16 = 4010;
/// Logged out by a backend (`POST /api/disconnect`, the default code): do
/// not reconnect until the user signs in again.
pub const LOGGED_OUT: u16 = 4011;
/// Slow consumer: the client did not read fast enough and its outbound
/// queue overflowed. Reconnect, and recover what was missed.
pub const SLOW_CONSUMER: u16 = 4008;
/// Rate limited: the client kept publishing over its rate limit. Reconnect
/// after a backoff, and publish less.
pub const RATE_LIMITED: u16 = 4029;
