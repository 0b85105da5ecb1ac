// Client: a connection to a pubsub-gateway, kept up until close(), and the public API
// (connect, close, subscribe, publish, ping; presence queries are on the Subscription). It
// owns the client's state machine (idle, connecting, connected, disconnected, closed, failed),
// routing the server's frames, and the subscriptions it resumes with `since` on every new
// connection: its own, and those the server made (POST /api/subscribe), which it adopts. Each
// attempt is a Connection (./connection.js) over a Transport (./transport.js); commands go
// through Requests (./requests.js), the close rules and the next attempt's timing through
// Reconnect (./reconnect.js), the token through Tokens (./tokens.js).

import { Connection } from './connection.js';
import { CLOSE_ABNORMAL } from './constants.js';
import { Emitter } from './emitter.js';
import { PubSubError } from './errors.js';
import { resolveOptions } from './options.js';
import { pingCommand, publishCommand } from './protocol.js';
import { Reconnect, backoffDelay, parseReconnectHint } from './reconnect.js';
import { Requests } from './requests.js';
import { Subscription } from './subscription.js';
import { Tokens } from './tokens.js';

/**
 * A connection to a pubsub-gateway, kept up until close().
 *
 * Events: state({state, previous}), connecting({attempt, url, transport}), connected({client, node,
 * pingIntervalMs}), disconnected({code, reason, wasClean, willReconnect, delay, attempt, hint}),
 * tokenRefreshed({expiresInMs}), serverSubscribed(Subscription), serverUnsubscribed(Subscription),
 * error(PubSubError).
 */
export class Client extends Emitter {
  #url;
  #opts;
  #openTransport;
  #timers;
  #clock;
  #random;
  #env;
  #envOff = null;

  #state = 'idle';
  #connection = null;
  #gen = 0;
  #tokens;
  #session = null;
  #requests;
  #reconnect;
  #subs = new Map();
  /** Channels with an `unsubscribe` of ours in flight: how many. */
  #unsubscribing = new Map();
  #waiters = [];

  /**
   * @param {string} url  ws:// or wss:// URL of the gateway's /ws endpoint
   * @param {object} [options]  see README.md and pubsub.d.ts
   */
  constructor(url, options = {}) {
    super();
    const resolved = resolveOptions(url, options);
    this.#url = url;
    this.#opts = resolved.opts;
    this.#openTransport = resolved.openTransport;
    this.#timers = resolved.timers;
    this.#random = resolved.random;
    this.#env = resolved.env;
    const setTimer = (ms, fn) => this._setTimer(ms, fn);
    const clearTimer = (handle) => this._clearTimer(handle);
    const now = () => this.#timers.now();
    this.#clock = { setTimer, clearTimer, now };
    this.#requests = new Requests({ setTimer, clearTimer, sendText: (text) => this.#sendText(text), maxQueue: this.#opts.maxQueue });
    const request = (frame, handlers) => this.#requests.request(frame, handlers);
    const emit = (event, payload) => this._emit(event, payload);
    this.#tokens = new Tokens({ token: resolved.token, getToken: this.#opts.getToken, emit, request, timeout: this.#opts.requestTimeout });
    const backoff = (attempt) => this._backoff(attempt);
    this.#reconnect = new Reconnect({ opts: this.#opts, random: this.#random, backoff, setTimer, clearTimer, now, open: () => this.#open() });
  }

  /** The gateway URL. */
  get url() {
    return this.#url;
  }

  /** The transport of the current (or next) attempt: 'websocket', 'http_stream' or 'sse'. */
  get transport() {
    return this.#openTransport.current?.() ?? 'websocket';
  }

  /** 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed' | 'failed' */
  get state() {
    return this.#state;
  }

  /** {client, node, pingIntervalMs} of the current connection, or null. */
  get session() {
    return this.#session ? { ...this.#session } : null;
  }

  /** The active subscriptions, by channel (also those the server made: `sub.server`). */
  get subscriptions() {
    return new Map(this.#subs);
  }

  getSubscription(channel) {
    return this.#subs.get(channel) ?? null;
  }

  /**
   * Starts connecting (and keeps reconnecting). Resolves on the next `connected`; rejects
   * if the client fails or is closed first. Calling it while already active is harmless.
   */
  connect() {
    const promise = new Promise((resolve, reject) => {
      if (this.#state === 'connected') return resolve(this.session);
      this.#waiters.push({ resolve, reject });
    });
    promise.catch(() => {});
    if (this.#state === 'idle' || this.#state === 'closed' || this.#state === 'failed') {
      this.#reconnect.reset();
      this.#envOff = this.#env.listen({
        online: () => this.#onOnline(),
        offline: () => this.#onOffline(),
        visible: () => this.#checkLiveness(),
      });
      if (this.#env.isOnline()) this.#open();
      else this.#waitForOnline({ code: CLOSE_ABNORMAL, reason: 'offline', wasClean: false, local: true });
    }
    return promise;
  }

  /**
   * Closes the connection and stops reconnecting. Queued and in-flight commands are rejected
   * with code `client_closed`. Subscriptions are kept: connect() again resumes them with `since`.
   */
  close() {
    if (this.#state === 'closed') return;
    const previous = this.#state;
    this.#detachConnection()?.close(1000, 'client closed');
    this.#stopAll();
    const err = new PubSubError('client_closed', 'the client was closed');
    this.#requests.failPending(err);
    this.#requests.failQueue(err);
    this.#setState('closed');
    if (previous === 'connected' || previous === 'connecting') {
      this._emit('disconnected', { code: 1000, reason: 'client closed', wasClean: true, willReconnect: false, delay: null, attempt: this.#reconnect.attempt, hint: null });
    }
    this.#rejectWaiters(err);
  }

  /**
   * Subscribes to `channel`. Messages start after the `subscribed` reply; across reconnects the
   * subscription resumes with `since` and delivers every message exactly once, in order.
   */
  subscribe(channel, options = {}) {
    if (typeof channel !== 'string' || channel === '') throw new TypeError('channel must be a non-empty string');
    if (this.#subs.has(channel)) {
      throw new PubSubError('already_subscribed', `already subscribed to "${channel}": unsubscribe first or use getSubscription()`, { channel });
    }
    const sub = new Subscription(this, channel, options);
    this.#subs.set(channel, sub);
    if (this.#state === 'connected') this._resubscribe(sub);
    return sub;
  }

  /**
   * Publishes `data` (any JSON value; a Uint8Array/ArrayBuffer is sent as binary `data_b64`).
   * Waits for the connection if needed. Resolves with {channel, epoch, offset}; rejects with a
   * PubSubError whose `code` is the server's error code, or `timeout`, `disconnected` (sent but
   * unanswered when the connection dropped: it may or may not have been published; not retried),
   * `queue_full`, `client_closed`.
   */
  publish(channel, data, { timeout } = {}) {
    if (typeof channel !== 'string' || channel === '') return Promise.reject(new TypeError('channel must be a non-empty string'));
    let command;
    try {
      command = publishCommand(channel, data);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#call(command, timeout).then((msg) => ({
      channel: msg.channel,
      epoch: msg.epoch,
      offset: msg.offset,
    }));
  }

  /** Sends an application ping; resolves with the round-trip time in milliseconds. */
  ping({ timeout } = {}) {
    const started = this.#timers.now();
    return this.#call(pingCommand, timeout).then(() => this.#timers.now() - started);
  }

  // ---- internals shared with Subscription ------------------------------------------------

  /** @internal */
  _setTimer(ms, fn) {
    return this.#timers.setTimeout(fn, ms);
  }

  /** @internal */
  _clearTimer(handle) {
    this.#timers.clearTimeout(handle);
  }

  /** @internal */
  _backoff(attempt) {
    return backoffDelay(attempt, { min: this.#opts.minReconnectDelay, max: this.#opts.maxReconnectDelay, random: this.#random });
  }

  /** @internal Sends the subscribe command of `sub` on the current connection. */
  _resubscribe(sub) {
    if (this.#state !== 'connected' || this.#subs.get(sub.channel) !== sub) return;
    const frame = sub._subscribeFrame();
    const since = frame.since ?? null;
    this.#requests.request(frame, {
      timeout: this.#opts.requestTimeout,
      settle: (msg) => sub._onReply(msg, since),
      // A subscribe the server does not answer means the connection is stuck.
      expire: () => this.#abort('subscribe timeout'),
    });
  }

  /** @internal */
  _unsubscribed(sub, wasLive) {
    if (this.#subs.get(sub.channel) === sub) this.#subs.delete(sub.channel);
    if (!wasLive || this.#state !== 'connected') return Promise.resolve();
    const channel = sub.channel;
    this.#unsubscribing.set(channel, (this.#unsubscribing.get(channel) ?? 0) + 1);
    return new Promise((resolve) => {
      const done = () => {
        const left = this.#unsubscribing.get(channel) - 1;
        if (left > 0) this.#unsubscribing.set(channel, left);
        else this.#unsubscribing.delete(channel);
        resolve();
      };
      this.#requests.request({ type: 'unsubscribe', channel }, { timeout: this.#opts.requestTimeout, settle: done, expire: done, fail: done });
    });
  }

  /** @internal An application command (see #call), for Subscription's presence queries. */
  _call(build, timeout) {
    return this.#call(build, timeout);
  }

  /** @internal */
  _forget(sub) {
    if (this.#subs.get(sub.channel) === sub) this.#subs.delete(sub.channel);
  }

  // ---- connection lifecycle ---------------------------------------------------------------

  #setState(state) {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this._emit('state', { state, previous });
  }

  async #open() {
    const gen = ++this.#gen;
    this.#reconnect.opening();
    this.#setState('connecting');
    this._emit('connecting', { attempt: this.#reconnect.attempt, url: this.#url, transport: this.transport });
    if (this.#tokens.missing) {
      let token;
      try {
        token = await this.#opts.getToken({ reason: this.#reconnect.tokenReason });
      } catch (cause) {
        if (gen === this.#gen && this.#state === 'connecting') {
          this.#fail(new PubSubError('token_failed', `getToken failed: ${cause?.message ?? cause}`, { cause }));
        }
        return;
      }
      if (gen !== this.#gen || this.#state !== 'connecting') return; // closed meanwhile
      if (typeof token !== 'string' || token === '') {
        this.#fail(new PubSubError('token_failed', 'getToken did not return a token'));
        return;
      }
      this.#tokens.current = token;
    }
    let connection;
    try {
      connection = new Connection({
        openTransport: this.#openTransport,
        url: this.#url,
        token: () => this.#tokens.current,
        requests: this.#requests,
        timers: this.#clock,
        connectTimeout: this.#opts.connectTimeout,
        heartbeat: this.#opts.heartbeat,
        onConnected: (msg) => this.#onConnected(msg),
        onFrame: (msg) => this.#onFrame(msg),
        onClose: (close) => this.#connection === connection && this.#onDisconnect(close),
      });
    } catch (cause) {
      this.#fail(new PubSubError('invalid_url', `cannot open a WebSocket to ${this.#url}: ${cause?.message ?? cause}`, { cause }));
      return;
    }
    this.#connection = connection;
  }

  #onConnected(msg) {
    this.#reconnect.authorized();
    this.#session = { client: msg.client, node: msg.node, pingIntervalMs: msg.ping_interval_ms };
    this.#setState('connected');
    this.#reconnect.connected();
    this.#connection?.established();
    for (const sub of this.#subs.values()) {
      if (sub.state === 'pending') this._resubscribe(sub);
    }
    this.#requests.flush();
    this._emit('connected', this.session);
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.resolve(this.session);
  }

  /** A frame from the server (a JSON object) other than the `connected` reply. */
  #onFrame(msg) {
    if (msg.server === true && msg.id == null && (msg.type === 'subscribed' || msg.type === 'unsubscribed')) {
      this.#onServerNotice(msg);
      return;
    }
    switch (msg.type) {
      case 'message':
        this.#subs.get(msg.channel)?._onMessage(msg);
        return;
      case 'gap':
        this.#subs.get(msg.channel)?._onGap(msg);
        return;
      case 'join':
      case 'leave':
        this.#subs.get(msg.channel)?._onPresence(msg);
        return;
      case 'token_expiring': {
        const gen = this.#gen;
        this.#tokens.refresh(msg.expires_in_ms, () => gen === this.#gen && this.#state === 'connected');
        return;
      }
      default:
        if (this.#requests.settle(msg)) return;
        if (msg.type === 'error') {
          this._emit('error', new PubSubError(msg.code, msg.message ?? msg.code));
        }
    }
  }

  /**
   * A server-side subscribe or unsubscribe (POST /api/subscribe, /api/unsubscribe) of this
   * connection: a `subscribed` or `unsubscribed` notice with `server: true` and no id. Frames
   * arrive in the order the server did things, which settles the races with our own commands.
   */
  #onServerNotice(msg) {
    const channel = msg.channel;
    if (typeof channel !== 'string' || channel === '') return;
    // Our `unsubscribe` of the channel, still in flight, comes after it on the server: it undoes
    // a server-side subscribe and makes a server-side unsubscribe moot.
    if (this.#unsubscribing.has(channel)) return;
    const existing = this.#subs.get(channel);
    if (msg.type === 'unsubscribed') {
      if (existing?._onServerUnsubscribed()) this._emit('serverUnsubscribed', existing);
      return;
    }
    if (existing) {
      existing._onServerSubscribed(msg);
      return;
    }
    const sub = new Subscription(this, channel, {}, { server: true });
    this.#subs.set(channel, sub);
    sub._onServerSubscribed(msg);
    // Subscribed at the notice's position; its messages come in later frames, so listeners
    // attached here miss none.
    if (this.#subs.get(channel) === sub) this._emit('serverSubscribed', sub);
  }

  /** Declares the current connection dead (timeouts): close it and handle as a disconnect. */
  #abort(reason) {
    this.#connection?.abort(reason);
  }

  /** Forgets the current connection and returns it. */
  #detachConnection() {
    const connection = this.#connection;
    this.#connection = null;
    return connection;
  }

  /** The current connection ended (`close`: {code, reason, wasClean, local}). */
  #onDisconnect(close) {
    const { opened } = this.#detachConnection();
    this.#session = null;
    this.#reconnect.disconnected();
    this.#requests.failPending(new PubSubError('disconnected', `the connection closed (${close.code}${close.reason ? ` ${close.reason}` : ''}) before the server answered`, { closeCode: close.code }));
    for (const sub of this.#subs.values()) sub._reset();

    const hint = parseReconnectHint(close.reason);
    const { fatal, delay, renewToken } = this.#reconnect.afterClose(close, hint);
    if (renewToken) this.#tokens.renew(); // ask getToken for a fresh one

    const info = { code: close.code, reason: close.reason, wasClean: close.wasClean, opened, local: close.local, hint, attempt: this.#reconnect.attempt };
    if (fatal) {
      this.#setState('disconnected');
      this._emit('disconnected', { ...info, willReconnect: false, delay: null });
      this.#fail(fatal);
      return;
    }
    if (!this.#env.isOnline()) {
      this.#waitForOnline(info);
      return;
    }
    this.#setState('disconnected');
    this._emit('disconnected', { ...info, willReconnect: true, delay });
    if (this.#state === 'disconnected') this.#reconnect.schedule(delay);
  }

  #waitForOnline(info) {
    this.#reconnect.waitForOnline();
    this.#setState('disconnected');
    this._emit('disconnected', { ...info, willReconnect: true, delay: null });
  }

  #onOnline() {
    if (this.#state === 'connected') return this.#checkLiveness();
    if (this.#state === 'disconnected') this.#reconnect.online();
  }

  #onOffline() {
    if (this.#state === 'connected') return this.#checkLiveness();
    if (this.#state === 'disconnected') this.#reconnect.offline();
  }

  /** Pings at once (tab became visible, network changed): a dead connection shows within the pong timeout. */
  #checkLiveness() {
    if (this.#state === 'connected') this.#connection?.checkLiveness();
  }

  #fail(err) {
    this.#detachConnection()?.close(1000, 'client gave up');
    this.#stopAll();
    this.#requests.failPending(err);
    this.#requests.failQueue(err);
    this.#setState('failed');
    this._emit('error', err);
    this.#rejectWaiters(err);
  }

  #stopAll() {
    this.#reconnect.disconnected();
    this.#reconnect.cancel();
    this.#session = null;
    this.#gen++; // a getToken in flight is ignored when it returns
    for (const sub of this.#subs.values()) sub._reset();
    this.#envOff?.();
    this.#envOff = null;
  }

  #rejectWaiters(err) {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.reject(err);
  }

  // ---- requests -------------------------------------------------------------------------

  /** An application command: waits (bounded) for the connection, times out from the call. */
  #call(build, timeout = this.#opts.requestTimeout) {
    if (this.#state === 'closed' || this.#state === 'failed') {
      return Promise.reject(new PubSubError('client_closed', `the client is ${this.#state}`));
    }
    return this.#requests.call(build, timeout, this.#state === 'connected');
  }

  /** Never throws: a frame for a closing connection is dropped, and its request fails with the close. */
  #sendText(text) {
    return this.#connection ? this.#connection.send(text) : false;
  }
}
