// Heartbeat: the application-level liveness check of one connection (browsers cannot see
// WebSocket pings). It pings after `interval` of silence from the server and declares the
// connection dead when nothing arrives within `timeout` after the ping.

export class Heartbeat {
  #config;
  #setTimer;
  #clearTimer;
  #now;
  #ping;
  #dead;
  #timer = null;
  #awaitingPong = false;
  #lastReceived = 0;

  /**
   * @param {object} io
   * @param {{interval: number, timeout: number} | false} io.config  false: no heartbeat
   * @param {(ms: number, fn: () => void) => unknown} io.setTimer
   * @param {(handle: unknown) => void} io.clearTimer
   * @param {() => number} io.now
   * @param {() => void} io.ping  sends a ping command (its reply needs no handling)
   * @param {() => void} io.dead  the pong did not come in time
   */
  constructor({ config, setTimer, clearTimer, now, ping, dead }) {
    this.#config = config;
    this.#setTimer = setTimer;
    this.#clearTimer = clearTimer;
    this.#now = now;
    this.#ping = ping;
    this.#dead = dead;
  }

  /** The socket opened: silence is counted from now. */
  opened() {
    this.#lastReceived = this.#now();
  }

  /** The connection is established: starts the heartbeat. */
  start() {
    this.#arm(this.#config ? this.#config.interval : 0);
  }

  /** Something arrived from the server; anything proves the connection alive. */
  received() {
    this.#lastReceived = this.#now();
    if (this.#awaitingPong) {
      this.#awaitingPong = false;
      this.#arm(this.#config.interval);
    }
  }

  /** Pings at once (unless one is already out): a dead connection shows within the timeout. */
  check() {
    if (!this.#config || this.#awaitingPong) return;
    this.#sendPing();
  }

  /** The connection is gone. */
  stop() {
    if (this.#timer !== null) this.#clearTimer(this.#timer);
    this.#timer = null;
    this.#awaitingPong = false;
  }

  #arm(ms) {
    if (this.#timer !== null) this.#clearTimer(this.#timer);
    this.#timer = null;
    if (!this.#config) return;
    this.#timer = this.#setTimer(ms, () => {
      this.#timer = null;
      const quiet = this.#now() - this.#lastReceived;
      const interval = this.#config.interval;
      if (quiet >= interval) this.#sendPing();
      else this.#arm(interval - quiet);
    });
  }

  #sendPing() {
    this.#awaitingPong = true;
    this.#ping();
    if (this.#timer !== null) this.#clearTimer(this.#timer);
    this.#timer = this.#setTimer(this.#config.timeout, () => {
      this.#timer = null;
      if (this.#awaitingPong) this.#dead();
    });
  }
}
