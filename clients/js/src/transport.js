// The seam between the Client and the wire: the Transport interface every transport
// implements, and the choice of transport for a client's options (today: WebSocket only).
//
// A transport carries protocol v1 JSON text both ways over one connection attempt. The Client
// creates one per attempt through a TransportFactory and never touches the underlying socket
// or request; everything above it (connect/connected, requests, heartbeat, reconnection and
// recovery with `since`) stays the same whatever the transport. Implementations live in
// ./transports/ (websocket.js now; HTTP streaming and SSE + POST can be added beside it).
//
// The contract, which transports/websocket.js implements:
// - The factory starts connecting at once and returns the transport; it may throw (bad URL).
// - It reports, through the handlers it was given, at most one onOpen() (ready to send),
//   then any number of onMessage(data) (a string for each text frame; anything else is
//   passed through and ignored by the Client, but still counts as traffic), and exactly one
//   onClose({code, reason, wasClean}) when the connection ends or fails, also when the
//   attempt never opened (then code 1006). onError(event) is informational only: an onClose
//   always follows it. Handlers are never called synchronously from the factory.
// - send(text) sends one command; it never throws, and returns false when the transport is
//   not open (the command is then lost, and its request fails with the close).
// - close(code, reason) ends the connection from the client's side; it never throws, and no
//   handler is called after it (the Client handles that disconnect itself).
// - Transports may use timers only through the ones they are given, so a fake clock sees all.

import { PROTOCOL } from './constants.js';
import { PubSubError } from './errors.js';
import { WebSocketTransport } from './transports/websocket.js';

/**
 * @typedef {object} TransportHandlers
 * @property {() => void} onOpen
 * @property {(data: unknown) => void} onMessage
 * @property {(close: {code: number, reason: string, wasClean: boolean}) => void} onClose
 * @property {(event: unknown) => void} [onError]
 */

/**
 * @typedef {object} TransportTimers
 * @property {(ms: number, fn: () => void) => unknown} setTimer
 * @property {(handle: unknown) => void} clearTimer
 */

/**
 * @typedef {object} Transport
 * @property {(text: string) => boolean} send
 * @property {(code: number, reason: string) => void} close
 */

/**
 * @typedef {(url: string, handlers: TransportHandlers, timers: TransportTimers) => Transport} TransportFactory
 */

/**
 * The transport factory for a client's options: WebSocket (options.WebSocket, else the global
 * one). Throws a PubSubError `no_websocket` when there is none.
 * @returns {TransportFactory}
 */
export function transportFor(options) {
  const WebSocket = options.WebSocket ?? globalThis.WebSocket;
  if (typeof WebSocket !== 'function') {
    throw new PubSubError('no_websocket', 'no WebSocket implementation: use a browser or Node 22+, run Node 20/21 with --experimental-websocket, or pass options.WebSocket');
  }
  return (url, handlers, timers) => new WebSocketTransport(WebSocket, url, [PROTOCOL], handlers, timers);
}
