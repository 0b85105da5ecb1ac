// When to reconnect: exponential backoff with full jitter, the server's reconnect hint in a
// close reason, and Reconnect, the Client's reconnection policy (what each close code means)
// and schedule (the next attempt's timer, waiting to be online).

import { CLOSE_FORBIDDEN, CLOSE_LOGGED_OUT, CLOSE_POLICY, CLOSE_UNAUTHORIZED, DEFAULTS } from './constants.js';
import { PubSubError } from './errors.js';

/**
 * Exponential backoff with full jitter: a random delay in [0, min(max, min * 2^attempt)).
 * `attempt` counts from 0.
 */
export function backoffDelay(attempt, { min = DEFAULTS.minReconnectDelay, max = DEFAULTS.maxReconnectDelay, random = Math.random } = {}) {
  const cap = Math.min(max, min * 2 ** Math.max(0, attempt));
  return Math.floor(random() * cap);
}

/**
 * The server's reconnect hint in a close reason: any reason that parses as a JSON object with a
 * non-negative number `reconnect_after_ms`. Returns the number of milliseconds, or null.
 */
export function parseReconnectHint(reason) {
  if (typeof reason !== 'string' || !reason.trimStart().startsWith('{')) return null;
  try {
    const value = JSON.parse(reason);
    const ms = value && typeof value === 'object' ? value.reconnect_after_ms : undefined;
    return typeof ms === 'number' && Number.isFinite(ms) && ms >= 0 ? ms : null;
  } catch {
    return null;
  }
}

/**
 * The reconnection policy and schedule of one Client: the count of consecutive failed
 * attempts (reset once a connection stayed up `stableAfter`), the close-code rules, the timer
 * of the next attempt, and holding attempts back while offline.
 */
export class Reconnect {
  #opts;
  #random;
  #backoff;
  #setTimer;
  #clearTimer;
  #now;
  #open;
  #attempt = 0;
  #authFailures = 0;
  #timer = null;
  #stableTimer = null;
  #waitingForOnline = false;
  #notBefore = 0;

  /**
   * @param {object} io
   * @param {object} io.opts  the client's resolved options
   * @param {() => number} io.random
   * @param {(attempt: number) => number} io.backoff  the delay before attempt number `attempt`
   * @param {(ms: number, fn: () => void) => unknown} io.setTimer
   * @param {(handle: unknown) => void} io.clearTimer
   * @param {() => number} io.now
   * @param {() => void} io.open  starts the next attempt
   */
  constructor({ opts, random, backoff, setTimer, clearTimer, now, open }) {
    this.#opts = opts;
    this.#random = random;
    this.#backoff = backoff;
    this.#setTimer = setTimer;
    this.#clearTimer = clearTimer;
    this.#now = now;
    this.#open = open;
  }

  /** Consecutive failed attempts so far. */
  get attempt() {
    return this.#attempt;
  }

  /** Why the next connection needs a token: 'unauthorized' after a close 4001, else 'connect'. */
  get tokenReason() {
    return this.#authFailures > 0 ? 'unauthorized' : 'connect';
  }

  /** connect() from idle, closed or failed: a fresh start. */
  reset() {
    this.#attempt = 0;
    this.#authFailures = 0;
    this.#notBefore = 0;
  }

  /** An attempt starts now. */
  opening() {
    this.#timer = null;
    this.#waitingForOnline = false;
  }

  /** The server accepted the token. */
  authorized() {
    this.#authFailures = 0;
  }

  /** The connection is established: if it stays up `stableAfter`, the backoff starts over. */
  connected() {
    this.#stableTimer = this.#setTimer(this.#opts.stableAfter, () => {
      this.#stableTimer = null;
      this.#attempt = 0;
    });
  }

  /** The connection went away before it was stable. */
  disconnected() {
    if (this.#stableTimer !== null) this.#clearTimer(this.#stableTimer);
    this.#stableTimer = null;
  }

  /**
   * The rules after a close ({code, reason}) with reconnect hint `hint`: returns {fatal} (a
   * PubSubError: do not reconnect) or {delay, renewToken} (renewToken: ask getToken again).
   */
  afterClose(close, hint) {
    let delay;
    let renewToken = false;
    if (close.code === CLOSE_UNAUTHORIZED) {
      this.#authFailures++;
      if (this.#authFailures >= 2) {
        return { fatal: new PubSubError('unauthorized', this.#opts.getToken ? 'the server rejected the fresh token from getToken (close 4001)' : 'the server rejected the token again (close 4001): pass getToken to renew it', { closeCode: close.code }) };
      }
      renewToken = true;
      delay = 0;
    } else if (close.code === CLOSE_LOGGED_OUT) {
      return { fatal: new PubSubError('logged_out', `the server logged this user out (close ${close.code}); not reconnecting`, { closeCode: close.code }) };
    } else if (close.code === CLOSE_FORBIDDEN || close.code === CLOSE_POLICY) {
      return { fatal: new PubSubError(close.code === CLOSE_FORBIDDEN ? 'forbidden' : 'policy_violation', `the server refused this client (close ${close.code}${close.reason ? `: ${close.reason}` : ''}); not reconnecting`, { closeCode: close.code }) };
    } else if (hint !== null) {
      delay = Math.round(hint + this.#random() * this.#opts.hintJitter);
    } else {
      if (this.#attempt >= this.#opts.maxReconnectAttempts) {
        return { fatal: new PubSubError('reconnect_failed', `gave up after ${this.#attempt} reconnection attempts`, { closeCode: close.code }) };
      }
      delay = this.#backoff(this.#attempt++);
    }
    this.#notBefore = hint !== null ? this.#now() + delay : 0;
    return { delay, renewToken };
  }

  /** Starts the next attempt after `delay`, unless one is already scheduled. */
  schedule(delay) {
    if (this.#timer === null) this.#timer = this.#setTimer(delay, () => this.#open());
  }

  /** Offline: no attempt until online(). */
  waitForOnline() {
    this.#waitingForOnline = true;
  }

  /** Back online: reconnect now (but not before a server's reconnect hint allows it). */
  online() {
    if (this.#timer !== null) this.#clearTimer(this.#timer);
    const wait = Math.max(0, this.#notBefore - this.#now());
    this.#waitingForOnline = false;
    this.#timer = this.#setTimer(wait, () => this.#open());
  }

  /** Went offline while waiting: attempts now would fail and burn the backoff, wait for online(). */
  offline() {
    if (this.#timer !== null) {
      this.#clearTimer(this.#timer);
      this.#timer = null;
      this.#waitingForOnline = true;
    }
  }

  /** The client closed or failed: no next attempt. */
  cancel() {
    if (this.#timer !== null) this.#clearTimer(this.#timer);
    this.#timer = null;
    this.#waitingForOnline = false;
  }
}
