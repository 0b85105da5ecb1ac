// The seam between the Client and the wire: the Transport interface every transport
// implements, and the choice of transport for a client's options: a list tried in order
// (default: WebSocket, then HTTP streaming, then SSE), falling back to the next one when an attempt never
// opened (a proxy that refuses the upgrade, or one that holds it until connectTimeout).
//
// A transport carries protocol v1 JSON text both ways over one connection attempt. The Client
// creates one per attempt through a TransportFactory and never touches the underlying socket
// or request; everything above it (connect/connected, requests, heartbeat, reconnection and
// recovery with `since`) stays the same whatever the transport. Implementations live in
// ./transports/: websocket.js, and http-stream.js (GET /stream, as chunked lines or as SSE,
// with commands POSTed).
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
import { HttpStreamTransport } from './transports/http-stream.js';
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

/** The transports a client tries, in order, unless options.transports says otherwise. */
export const DEFAULT_TRANSPORTS = Object.freeze(['websocket', 'http_stream', 'sse']);

/**
 * The transport factory for a client's options. options.transports (default
 * DEFAULT_TRANSPORTS, or only 'websocket' when options.WebSocket is given) lists the transports to try: an attempt uses the current one; one that
 * never opened moves the next attempt to the next transport (wrapping around), and one that
 * opened keeps it, so a client behind a proxy that breaks upgrades settles on HTTP streaming
 * and stays there. Transports this runtime cannot offer are left out (no WebSocket, no fetch);
 * throws a PubSubError `no_transport` when none is left (`no_websocket` when only WebSocket
 * was asked for).
 * @returns {TransportFactory & {current: () => string}}
 */
export function transportFor(options) {
  // Passing a WebSocket implementation picks the transport (Node apps, tests), unless a list
  // says otherwise.
  const names = options.transports ?? (options.WebSocket != null ? ['websocket'] : DEFAULT_TRANSPORTS);
  if (!Array.isArray(names) || names.length === 0 || names.some((n) => !MAKERS[n])) {
    throw new TypeError(`transports must be a non-empty list of ${Object.keys(MAKERS).map((n) => `'${n}'`).join(', ')}`);
  }
  const available = names.map((name) => [name, MAKERS[name](options)]).filter(([, make]) => make !== null);
  if (available.length === 0) {
    if (names.length === 1 && names[0] === 'websocket') {
      throw new PubSubError('no_websocket', 'no WebSocket implementation: use a browser or Node 22+, run Node 20/21 with --experimental-websocket, or pass options.WebSocket');
    }
    throw new PubSubError('no_transport', `none of the transports ${names.join(', ')} is available here (no WebSocket, no fetch): pass options.WebSocket or options.fetch`);
  }
  let index = 0;
  const factory = (url, handlers, timers) => {
    const at = index;
    let opened = false;
    const neverOpened = () => {
      if (!opened && index === at) index = (at + 1) % available.length;
    };
    const transport = available[at][1](
      url,
      {
        ...handlers,
        onOpen: () => {
          opened = true;
          handlers.onOpen();
        },
        onClose: (close) => {
          neverOpened();
          handlers.onClose(close);
        },
      },
      timers,
    );
    return {
      send: (text) => transport.send(text),
      close: (code, reason) => {
        neverOpened();
        transport.close(code, reason);
      },
    };
  };
  factory.current = () => available[index][0];
  return factory;
}

/** For each transport name: its factory for these options, or null when this runtime has none. */
const MAKERS = {
  websocket(options) {
    const WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocket !== 'function') return null;
    return (url, handlers, timers) => new WebSocketTransport(WebSocket, url, [PROTOCOL], handlers, timers);
  },
  http_stream(options) {
    const fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
    if (typeof fetchImpl !== 'function' || typeof TextDecoder !== 'function') return null;
    return (url, handlers, timers) => new HttpStreamTransport(fetchImpl, url, handlers, timers);
  },
  sse(options) {
    const fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
    const EventSource = options.EventSource ?? globalThis.EventSource;
    if (typeof fetchImpl !== 'function' || typeof EventSource !== 'function') return null;
    return (url, handlers, timers) => new HttpStreamTransport(fetchImpl, url, handlers, timers, EventSource);
  },
};
