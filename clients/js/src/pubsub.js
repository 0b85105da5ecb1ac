// pubsub-gateway JavaScript client: dependency-free ES modules for browsers and Node 22+
// (global WebSocket). Speaks protocol v1 over the `pubsub.v1.json` subprotocol; the contract
// is docs/protocol.md of the pubsub-gateway repository.
//
// This file is the one entry point: it re-exports the public API from the modules beside it
// (import this file, not the others; their exports are internal). Everything a long-lived
// subscriber needs is there: reconnection with exponential backoff and full jitter, the
// server's reconnect hints, recovery with `since` (exactly-once, in-order delivery across
// reconnects), an application heartbeat, online/offline and page-visibility awareness, and
// token refresh.

export { DEFAULTS, PROTOCOL, STATES } from './constants.js';
export { PubSubError } from './errors.js';
export { backoffDelay, parseReconnectHint } from './reconnect.js';
export { Subscription } from './subscription.js';
export { Client } from './client.js';
