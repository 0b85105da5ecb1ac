// Constants of protocol v1 and of this client: the subprotocol, the client states, the
// defaults of every option, and the close codes the client acts on (docs/protocol.md).

/** The WebSocket subprotocol this client speaks. */
export const PROTOCOL = 'pubsub.v1.json';

/** Client states, in the order a healthy client goes through them. */
export const STATES = Object.freeze(['idle', 'connecting', 'connected', 'disconnected', 'closed', 'failed']);

/** Defaults of every tunable option (milliseconds unless noted). */
export const DEFAULTS = Object.freeze({
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  /** A connection that stayed up this long resets the backoff. */
  stableAfter: 10000,
  /** Extra random delay (0..hintJitter) added to a server reconnect hint. */
  hintJitter: 500,
  /** Give up after this many consecutive failed attempts (Infinity: never). */
  maxReconnectAttempts: Infinity,
  /** From creating the socket to the `connected` reply. */
  connectTimeout: 10000,
  /** Default timeout of publish(), ping() and the presence queries (from the call, queueing included). */
  requestTimeout: 10000,
  /** Most commands queued while the client is not connected. */
  maxQueue: 1000,
  /** Application heartbeat: ping after `interval` of silence, dead after `timeout` more. */
  heartbeat: Object.freeze({ interval: 15000, timeout: 10000 }),
});

// Close codes (docs/protocol.md, "Close codes").
export const CLOSE_UNAUTHORIZED = 4001;
export const CLOSE_FORBIDDEN = 4003;
export const CLOSE_POLICY = 1008;
/** A backend logged the user out (POST /api/disconnect): do not reconnect. 4010 reconnects as usual. */
export const CLOSE_LOGGED_OUT = 4011;
/** Code reported for connections the client itself declared dead (timeouts, offline). */
export const CLOSE_ABNORMAL = 1006;
