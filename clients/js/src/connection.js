// Connection: one connection attempt of a Client over one Transport, from opening it to its
// end. It owns the connect handshake (within connectTimeout), the application heartbeat,
// turning the server's frames into objects, and declaring the connection dead (timeouts, a
// refused connect). What follows its end (reconnecting, recovery) is the Client's business.

import { CLOSE_ABNORMAL } from './constants.js';
import { Heartbeat } from './heartbeat.js';
import { parseFrame } from './protocol.js';

export class Connection {
  #transport;
  #requests;
  #timers;
  #token;
  #onConnected;
  #onFrame;
  #onClose;
  #heartbeat;
  #connectTimer = null;
  #opened = false;
  #done = false;

  /**
   * Opens a transport to `url` (throws what the transport factory throws).
   * @param {object} io
   * @param {import('./transport.js').TransportFactory} io.openTransport
   * @param {string} io.url
   * @param {() => string | null} io.token  the token for `connect`
   * @param {import('./requests.js').Requests} io.requests  the Client's commands (they send on this connection)
   * @param {{setTimer: (ms: number, fn: () => void) => unknown, clearTimer: (handle: unknown) => void, now: () => number}} io.timers
   * @param {number} io.connectTimeout  from now to the `connected` reply
   * @param {{interval: number, timeout: number} | false} io.heartbeat
   * @param {(msg: object) => void} io.onConnected  the server accepted the connection
   * @param {(msg: object) => void} io.onFrame  any other frame from the server
   * @param {(close: {code: number, reason: string, wasClean: boolean, local: boolean}) => void} io.onClose
   *   the connection ended (local: the client declared it dead); not called after close()
   */
  constructor({ openTransport, url, token, requests, timers, connectTimeout, heartbeat, onConnected, onFrame, onClose }) {
    this.#requests = requests;
    this.#timers = timers;
    this.#token = token;
    this.#onConnected = onConnected;
    this.#onFrame = onFrame;
    this.#onClose = onClose;
    this.#heartbeat = new Heartbeat({
      config: heartbeat,
      setTimer: timers.setTimer,
      clearTimer: timers.clearTimer,
      now: timers.now,
      ping: () => requests.request({ type: 'ping' }, { timeout: null, settle: () => {} }),
      dead: () => this.abort('heartbeat timeout'),
    });
    this.#transport = openTransport(
      url,
      {
        onOpen: () => !this.#done && this.#opening(),
        onMessage: (data) => !this.#done && this.#received(data),
        onClose: ({ code, reason, wasClean }) => !this.#done && this.#end({ code, reason, wasClean, local: false }),
      },
      { setTimer: timers.setTimer, clearTimer: timers.clearTimer },
    );
    this.#connectTimer = timers.setTimer(connectTimeout, () => {
      this.#connectTimer = null;
      this.abort('connect timeout');
    });
  }

  /** Whether the transport opened (false: the upgrade failed, e.g. 503). */
  get opened() {
    return this.#opened;
  }

  /** Sends a command's text; false (never a throw) when the connection is not open. */
  send(text) {
    return this.#done ? false : this.#transport.send(text);
  }

  /** The Client is connected: the heartbeat starts. */
  established() {
    this.#heartbeat.start();
  }

  /** Pings at once (tab became visible, network changed): a dead connection shows within the pong timeout. */
  checkLiveness() {
    this.#heartbeat.check();
  }

  /** Declares the connection dead: closes it and reports onClose with 1006 (local). */
  abort(reason) {
    if (this.#done) return;
    this.#stop();
    this.#transport.close(4000, reason.slice(0, 100));
    this.#onClose({ code: CLOSE_ABNORMAL, reason, wasClean: false, local: true });
  }

  /** Closes it from the client's side (close(), giving up); onClose is not called. */
  close(code, reason) {
    if (this.#done) return;
    this.#stop();
    this.#transport.close(code, reason);
  }

  #opening() {
    this.#opened = true;
    this.#heartbeat.opened();
    const frame = { type: 'connect' };
    const token = this.#token();
    if (token != null) frame.token = token;
    this.#requests.request(frame, {
      timeout: null, // covered by connectTimeout
      settle: (msg) => {
        if (msg.type === 'connected') {
          this.#timers.clearTimer(this.#connectTimer);
          this.#connectTimer = null;
          this.#onConnected(msg);
        } else if (msg.code !== 'unauthorized') this.abort(`connect refused: ${msg.code}`);
        // unauthorized: the server closes with 4001 next, which decides what follows.
      },
    });
  }

  #received(data) {
    this.#heartbeat.received();
    const msg = parseFrame(data);
    if (msg) this.#onFrame(msg);
  }

  #end(close) {
    this.#stop();
    this.#onClose(close);
  }

  #stop() {
    this.#done = true;
    if (this.#connectTimer !== null) this.#timers.clearTimer(this.#connectTimer);
    this.#connectTimer = null;
    this.#heartbeat.stop();
  }
}
