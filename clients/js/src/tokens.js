// Tokens: the Client's JWT. It owns the current token (the `token` option, or the last one
// getToken returned), whether the next connection must ask getToken first (no token yet, or
// after a close 4001), and renewing it on `token_expiring` with the `refresh` command.

import { PubSubError } from './errors.js';

export class Tokens {
  #token;
  #getToken;
  #emit;
  #request;
  #timeout;

  /**
   * @param {object} io
   * @param {string | null} io.token
   * @param {Function} [io.getToken]
   * @param {(event: string, payload: unknown) => void} io.emit  the Client's events
   * @param {(frame: object, handlers: object) => void} io.request  sends a command (Requests.request)
   * @param {number} io.timeout  of the refresh command
   */
  constructor({ token, getToken, emit, request, timeout }) {
    this.#token = token;
    this.#getToken = getToken;
    this.#emit = emit;
    this.#request = request;
    this.#timeout = timeout;
  }

  /** The token to send in `connect`, or null. */
  get current() {
    return this.#token;
  }

  set current(token) {
    this.#token = token;
  }

  /** True when the next connection has to ask getToken for a token first. */
  get missing() {
    return this.#token == null && !!this.#getToken;
  }

  /** After a close 4001: the next connection asks getToken for a fresh token (if there is one). */
  renew() {
    if (this.#getToken) this.#token = null;
  }

  /**
   * The server said the token expires in `expiresInMs`: asks getToken for a new one and sends it
   * in `refresh` if `stillConnected()` (else the next connection uses it). Problems are `error` events.
   */
  async refresh(expiresInMs, stillConnected) {
    if (!this.#getToken) {
      this.#emit('error', new PubSubError('token_expiring', `the token expires in ${expiresInMs} ms and no getToken option is set to renew it`));
      return;
    }
    let token;
    try {
      token = await this.#getToken({ reason: 'refresh', expiresInMs });
    } catch (cause) {
      this.#emit('error', new PubSubError('token_failed', `getToken failed to renew the token: ${cause?.message ?? cause}`, { cause }));
      return;
    }
    if (typeof token !== 'string' || token === '') {
      this.#emit('error', new PubSubError('token_failed', 'getToken did not return a token'));
      return;
    }
    this.#token = token;
    if (!stillConnected()) return; // the next connection uses it
    this.#request({ type: 'refresh', token }, {
      timeout: this.#timeout,
      settle: (msg) => {
        if (msg.type === 'refreshed') this.#emit('tokenRefreshed', { expiresInMs: msg.expires_in_ms });
        else this.#emit('error', new PubSubError(msg.code, `refresh refused: ${msg.message ?? msg.code}`));
      },
      expire: () => this.#emit('error', new PubSubError('timeout', 'refresh got no answer')),
    });
  }
}
