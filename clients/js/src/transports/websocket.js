// WebSocketTransport: the Transport (see ../transport.js) over a browser/Node WebSocket, or
// any class with the same interface (options.WebSocket). It normalises the socket's events and
// makes a failed handshake that fires only `error` end in a close (1006) like every other.

import { CLOSE_ABNORMAL } from '../constants.js';

const OPEN = 1; // WebSocket.OPEN

export class WebSocketTransport {
  #ws;
  #handlers;
  #timers;
  #errorTimer = null;
  #done = false;

  /** Opens the socket (throws if the WebSocket constructor does, e.g. for a bad URL). */
  constructor(WebSocket, url, protocols, handlers, timers) {
    const ws = new WebSocket(url, protocols);
    this.#ws = ws;
    this.#handlers = handlers;
    this.#timers = timers;
    ws.onopen = () => !this.#done && handlers.onOpen();
    ws.onmessage = (event) => !this.#done && handlers.onMessage(event.data);
    ws.onclose = (event) => !this.#done && this.#closed({ code: event.code, reason: event.reason ?? '', wasClean: !!event.wasClean });
    // A close event normally follows an error. Some runtimes (Node 20's undici, on a failed
    // handshake) fire only the error: then the socket counts as closed with 1006.
    ws.onerror = (event) => {
      if (this.#done || this.#errorTimer !== null) return;
      this.#errorTimer = timers.setTimer(0, () => {
        this.#errorTimer = null;
        if (!this.#done) this.#closed({ code: CLOSE_ABNORMAL, reason: '', wasClean: false });
      });
      handlers.onError?.(event);
    };
  }

  /** Sends one text frame; false (never a throw) when the socket is not open. */
  send(text) {
    const ws = this.#ws;
    if (this.#done || ws.readyState !== OPEN) return false;
    try {
      ws.send(text);
      return true;
    } catch {
      return false;
    }
  }

  /** Closes from the client's side; no handler is called afterwards. */
  close(code, reason) {
    const ws = this.#detach();
    try {
      ws.close(code, reason);
    } catch {
      // not open, or already closing
    }
  }

  #closed(close) {
    this.#detach();
    this.#handlers.onClose(close);
  }

  #detach() {
    this.#done = true;
    if (this.#errorTimer !== null) this.#timers.clearTimer(this.#errorTimer);
    this.#errorTimer = null;
    const ws = this.#ws;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    return ws;
  }
}
