// pubsub-gateway JavaScript client: one dependency-free ES module for browsers and
// Node 22+ (global WebSocket). Speaks protocol v1 over the `pubsub.v1.json`
// subprotocol; the contract is docs/protocol.md of the pubsub-gateway repository.
//
// Everything a long-lived subscriber needs is here: reconnection with exponential
// backoff and full jitter, the server's reconnect hints, recovery with `since`
// (exactly-once, in-order delivery across reconnects), an application heartbeat,
// online/offline and page-visibility awareness, and token refresh.

/** The WebSocket subprotocol this client speaks. */
export const PROTOCOL = 'pubsub.v1.json';

/** Client states, in the order a healthy client goes through them. */
export const STATES = Object.freeze(['idle', 'connecting', 'connected', 'disconnected', 'closed', 'failed']);

const OPEN = 1; // WebSocket.OPEN

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
  /** Default timeout of publish() and ping() (from the call, queueing included). */
  requestTimeout: 10000,
  /** Most commands queued while the client is not connected. */
  maxQueue: 1000,
  /** Application heartbeat: ping after `interval` of silence, dead after `timeout` more. */
  heartbeat: Object.freeze({ interval: 15000, timeout: 10000 }),
});

// Close codes (docs/protocol.md, "Close codes").
const CLOSE_UNAUTHORIZED = 4001;
const CLOSE_FORBIDDEN = 4003;
const CLOSE_POLICY = 1008;
/** Code reported for connections the client itself declared dead (timeouts, offline). */
const CLOSE_ABNORMAL = 1006;

/** An error with a machine-readable `code` (the server's error code, or one of the client's). */
export class PubSubError extends Error {
  constructor(code, message, details = {}) {
    super(message, details.cause !== undefined ? { cause: details.cause } : undefined);
    this.name = 'PubSubError';
    this.code = code;
    for (const [key, value] of Object.entries(details)) {
      if (key !== 'cause') this[key] = value;
    }
  }
}

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

function toBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}

/** Minimal event emitter: on() returns a function that removes the listener. */
class Emitter {
  #listeners = new Map();

  on(event, listener) {
    if (typeof listener !== 'function') throw new TypeError('listener must be a function');
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  once(event, listener) {
    const off = this.on(event, (...args) => {
      off();
      listener(...args);
    });
    return off;
  }

  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }

  listenerCount(event) {
    return this.#listeners.get(event)?.size ?? 0;
  }

  /** Calls every listener; a throwing listener is reported, never breaks the client. */
  _emit(event, ...args) {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (err) {
        this._listenerFailed(event, err);
      }
    }
  }

  _listenerFailed(event, err) {
    if (event !== 'error' && this.listenerCount('error') > 0) {
      this._emit('error', new PubSubError('listener_error', `a "${event}" listener threw: ${err?.message ?? err}`, { cause: err }));
    } else {
      console.error(`pubsub: a "${event}" listener threw`, err);
    }
  }
}

/** Browser online/offline and visibility events; none elsewhere. */
function defaultEnvironment() {
  const win = typeof window !== 'undefined' && typeof window.addEventListener === 'function' ? window : null;
  const doc = typeof document !== 'undefined' && typeof document.addEventListener === 'function' ? document : null;
  return {
    isOnline: () => typeof navigator === 'undefined' || navigator.onLine !== false,
    listen({ online, offline, visible }) {
      const onVisibility = () => {
        if (doc.visibilityState === 'visible') visible();
      };
      win?.addEventListener('online', online);
      win?.addEventListener('offline', offline);
      doc?.addEventListener('visibilitychange', onVisibility);
      return () => {
        win?.removeEventListener('online', online);
        win?.removeEventListener('offline', offline);
        doc?.removeEventListener('visibilitychange', onVisibility);
      };
    },
  };
}

const noEnvironment = { isOnline: () => true, listen: () => () => {} };

/**
 * One channel subscription of a Client. Created by client.subscribe(); lives across
 * reconnects until unsubscribe() (or a permanent refusal by the server).
 *
 * Events (also settable as on* options of subscribe()): message(data, meta), subscribed(info),
 * recovered(info), recoveryFailed(info), gap(info), error(err).
 */
export class Subscription extends Emitter {
  #client;
  #state = 'pending';
  #position = null;
  #recovering = null;
  #retries = 0;
  #retryTimer = null;
  #resolveReady;
  #rejectReady;

  /** @internal */
  constructor(client, channel, options) {
    super();
    this.#client = client;
    this.channel = channel;
    for (const [option, event] of [
      ['onMessage', 'message'],
      ['onSubscribed', 'subscribed'],
      ['onRecovered', 'recovered'],
      ['onRecoveryFailed', 'recoveryFailed'],
      ['onGap', 'gap'],
      ['onError', 'error'],
    ]) {
      if (typeof options[option] === 'function') this.on(event, options[option]);
    }
    const since = options.since;
    if (since != null) {
      if (typeof since.epoch !== 'string' || !Number.isSafeInteger(since.offset) || since.offset < 0) {
        throw new TypeError('since must be {epoch: string, offset: non-negative integer}');
      }
      this.#position = { epoch: since.epoch, offset: since.offset };
    }
    /** Resolves once the first `subscribed` reply arrived; rejects if the server refused. */
    this.ready = new Promise((resolve, reject) => {
      this.#resolveReady = resolve;
      this.#rejectReady = reject;
    });
    this.ready.catch(() => {}); // never an unhandled rejection if the app does not look
  }

  /** 'pending' | 'subscribing' | 'subscribed' | 'unsubscribed' | 'failed' */
  get state() {
    return this.#state;
  }

  /** Position of the last message processed, {epoch, offset}, or null before the first reply. */
  get position() {
    return this.#position ? { ...this.#position } : null;
  }

  /** True while replayed messages of a recovery are still being delivered. */
  get recovering() {
    return this.#recovering !== null;
  }

  /** Stops the subscription (idempotent). Resolves when the server confirmed, or at once offline. */
  unsubscribe() {
    if (this.#state === 'unsubscribed' || this.#state === 'failed') return Promise.resolve();
    const wasLive = this.#state === 'subscribing' || this.#state === 'subscribed';
    this.#end('unsubscribed');
    return this.#client._unsubscribed(this, wasLive);
  }

  #end(state) {
    this.#state = state;
    this.#recovering = null;
    this.#clearRetry();
  }

  #clearRetry() {
    if (this.#retryTimer !== null) {
      this.#client._clearTimer(this.#retryTimer);
      this.#retryTimer = null;
    }
  }

  _listenerFailed(event, err) {
    this.#client._listenerFailed(`subscription ${this.channel} ${event}`, err);
  }

  // ---- called by the Client -------------------------------------------------------------

  /** The subscribe command for this subscription (with `since` when a position is known). */
  _subscribeFrame() {
    this.#state = 'subscribing';
    this.#recovering = null;
    const frame = { type: 'subscribe', channel: this.channel };
    if (this.#position) frame.since = { epoch: this.#position.epoch, offset: this.#position.offset };
    return frame;
  }

  /** The connection went away: subscribe again on the next one. */
  _reset() {
    if (this.#state === 'subscribing' || this.#state === 'subscribed') this.#state = 'pending';
    this.#recovering = null;
    this.#clearRetry();
  }

  _onReply(msg, since) {
    if (this.#state !== 'subscribing') return; // unsubscribed meanwhile
    if (msg.type === 'error') return this.#onRefused(msg);
    if (msg.type !== 'subscribed') return;
    this.#retries = 0;
    this.#state = 'subscribed';
    const reply = { channel: this.channel, epoch: msg.epoch, offset: msg.offset, recovered: msg.recovered };
    let recovery = null;
    if (since && msg.recovered === true) {
      // Replayed messages follow; our position stays at `since` and advances with them.
      const missed = this.#position.epoch === msg.epoch ? msg.offset - this.#position.offset : 0;
      if (missed > 0) this.#recovering = { epoch: msg.epoch, target: msg.offset, count: 0 };
      else recovery = { channel: this.channel, epoch: this.#position.epoch, offset: this.#position.offset, replayed: 0 };
    } else {
      this.#position = { epoch: msg.epoch, offset: msg.offset };
    }
    this._emit('subscribed', reply);
    this.#resolveReady();
    if (since && msg.recovered !== true) {
      this._emit('recoveryFailed', { channel: this.channel, since, epoch: msg.epoch, offset: msg.offset });
    } else if (recovery) {
      this._emit('recovered', recovery);
    }
  }

  #onRefused(msg) {
    const err = new PubSubError(msg.code, msg.message ?? msg.code, { channel: this.channel });
    if (msg.code === 'unavailable' || msg.code === 'internal') {
      // Nothing was done: retry with backoff while the connection lasts.
      this.#state = 'pending';
      const delay = this.#client._backoff(this.#retries++);
      this.#retryTimer = this.#client._setTimer(delay, () => {
        this.#retryTimer = null;
        this.#client._resubscribe(this);
      });
      this._report(err);
      return;
    }
    // forbidden, invalid_channel, limit_exceeded, ...: retrying unchanged will not help.
    this.#end('failed');
    this.#client._forget(this);
    this.#rejectReady(err);
    this._report(err);
  }

  _report(err) {
    if (this.listenerCount('error') > 0) this._emit('error', err);
    else this.#client._emit('error', err);
  }

  _onMessage(msg) {
    if (this.#state !== 'subscribed') return; // not ours: before our reply, or after unsubscribe
    const epoch = msg.epoch;
    const offset = msg.offset;
    const known = this.#position;
    if (known && typeof offset === 'number' && epoch === known.epoch && offset <= known.offset) return; // seen
    if (typeof offset === 'number' && typeof epoch === 'string') this.#position = { epoch, offset };
    const binary = !('data' in msg) && typeof msg.data_b64 === 'string';
    const data = binary ? fromBase64(msg.data_b64) : msg.data;
    const recovering = this.#recovering;
    if (recovering) recovering.count++;
    this._emit('message', data, { channel: this.channel, epoch, offset, binary, replayed: recovering !== null });
    if (recovering && this.#recovering === recovering && (epoch !== recovering.epoch || offset >= recovering.target)) {
      this.#recovering = null;
      this._emit('recovered', { channel: this.channel, epoch, offset, replayed: recovering.count });
    }
  }

  _onGap(msg) {
    if (this.#state !== 'subscribed') return;
    const known = this.#position;
    if (!(known && known.epoch === msg.epoch && known.offset >= msg.offset)) {
      this.#position = { epoch: msg.epoch, offset: msg.offset };
    }
    if (this.#recovering && this.#recovering.epoch !== msg.epoch) this.#recovering = null;
    this._emit('gap', { channel: this.channel, epoch: msg.epoch, offset: msg.offset });
  }
}

/**
 * A connection to a pubsub-gateway, kept up until close().
 *
 * Events: state({state, previous}), connecting({attempt, url}), connected({client, node,
 * pingIntervalMs}), disconnected({code, reason, wasClean, willReconnect, delay, attempt, hint}),
 * tokenRefreshed({expiresInMs}), error(PubSubError).
 */
export class Client extends Emitter {
  #url;
  #opts;
  #WebSocket;
  #timers;
  #random;
  #env;
  #envOff = null;

  #state = 'idle';
  #ws = null;
  #gen = 0;
  #opened = false;
  #attempt = 0;
  #authFailures = 0;
  #token;
  #session = null;
  #nextId = 1;
  #pending = new Map();
  #queue = [];
  #subs = new Map();
  #waiters = [];

  #connectTimer = null;
  #errorTimer = null;
  #reconnectTimer = null;
  #stableTimer = null;
  #heartbeatTimer = null;
  #awaitingPong = false;
  #lastReceived = 0;
  #waitingForOnline = false;
  #notBefore = 0;

  /**
   * @param {string} url  ws:// or wss:// URL of the gateway's /ws endpoint
   * @param {object} [options]  see README.md and pubsub.d.ts
   */
  constructor(url, options = {}) {
    super();
    if (typeof url !== 'string' || url === '') throw new TypeError('url must be a ws:// or wss:// URL');
    if (options.protocol != null && options.protocol !== 'json') {
      throw new PubSubError('unsupported_protocol', `protocol "${options.protocol}" is not supported by this client: only "json" (${PROTOCOL})`);
    }
    if (options.token != null && typeof options.token !== 'string') throw new TypeError('token must be a string');
    if (options.getToken != null && typeof options.getToken !== 'function') throw new TypeError('getToken must be a function');
    this.#url = url;
    const heartbeat = options.heartbeat === false ? false : { ...DEFAULTS.heartbeat, ...(options.heartbeat ?? {}) };
    this.#opts = { ...DEFAULTS, ...options, heartbeat };
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new PubSubError('no_websocket', 'no WebSocket implementation: use a browser or Node 22+, run Node 20/21 with --experimental-websocket, or pass options.WebSocket');
    }
    const timers = options.timers ?? {};
    this.#timers = {
      setTimeout: timers.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms)),
      clearTimeout: timers.clearTimeout ?? ((handle) => globalThis.clearTimeout(handle)),
      now: timers.now ?? (() => Date.now()),
    };
    this.#random = options.random ?? Math.random;
    this.#env = options.environment === false ? noEnvironment : options.environment ?? defaultEnvironment();
    this.#token = options.token ?? null;
  }

  /** The gateway URL. */
  get url() {
    return this.#url;
  }

  /** 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed' | 'failed' */
  get state() {
    return this.#state;
  }

  /** {client, node, pingIntervalMs} of the current connection, or null. */
  get session() {
    return this.#session ? { ...this.#session } : null;
  }

  /** The active subscriptions, by channel. */
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
      this.#attempt = 0;
      this.#authFailures = 0;
      this.#notBefore = 0;
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
    const ws = this.#detachSocket();
    if (ws) {
      try {
        ws.close(1000, 'client closed');
      } catch {
        // already closing
      }
    }
    this.#stopAll();
    const err = new PubSubError('client_closed', 'the client was closed');
    this.#failPending(err);
    this.#failQueue(err);
    this.#setState('closed');
    if (previous === 'connected' || previous === 'connecting') {
      this._emit('disconnected', { code: 1000, reason: 'client closed', wasClean: true, willReconnect: false, delay: null, attempt: this.#attempt, hint: null });
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
    let body;
    const bytes = asBytes(data);
    try {
      if (bytes) body = `"data_b64":${JSON.stringify(toBase64(bytes))}`;
      else {
        const json = JSON.stringify(data);
        if (json === undefined) throw new TypeError(`${typeof data} is not a JSON value`);
        body = `"data":${json}`;
      }
    } catch (cause) {
      return Promise.reject(new PubSubError('bad_request', `data cannot be sent as JSON: ${cause.message}`, { cause }));
    }
    const channelJson = JSON.stringify(channel);
    return this.#call((id) => `{"type":"publish","id":${id},"channel":${channelJson},${body}}`, timeout).then((msg) => ({
      channel: msg.channel,
      epoch: msg.epoch,
      offset: msg.offset,
    }));
  }

  /** Sends an application ping; resolves with the round-trip time in milliseconds. */
  ping({ timeout } = {}) {
    const started = this.#timers.now();
    return this.#call((id) => `{"type":"ping","id":${id}}`, timeout).then(() => this.#timers.now() - started);
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
    this.#request(frame, {
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
    return new Promise((resolve) => {
      this.#request({ type: 'unsubscribe', channel: sub.channel }, { timeout: this.#opts.requestTimeout, settle: () => resolve(), expire: () => resolve(), fail: () => resolve() });
    });
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
    this.#reconnectTimer = null;
    this.#waitingForOnline = false;
    this.#setState('connecting');
    this._emit('connecting', { attempt: this.#attempt, url: this.#url });
    if (this.#token == null && this.#opts.getToken) {
      let token;
      try {
        token = await this.#opts.getToken({ reason: this.#authFailures > 0 ? 'unauthorized' : 'connect' });
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
      this.#token = token;
    }
    let ws;
    try {
      ws = new this.#WebSocket(this.#url, [PROTOCOL]);
    } catch (cause) {
      this.#fail(new PubSubError('invalid_url', `cannot open a WebSocket to ${this.#url}: ${cause?.message ?? cause}`, { cause }));
      return;
    }
    this.#ws = ws;
    this.#opened = false;
    ws.onopen = () => this.#ws === ws && this.#onOpen();
    ws.onmessage = (event) => this.#ws === ws && this.#onFrame(event.data);
    ws.onclose = (event) => this.#ws === ws && this.#onDisconnect({ code: event.code, reason: event.reason ?? '', wasClean: !!event.wasClean, local: false });
    // A close event normally follows an error. Some runtimes (Node 20's undici, on a failed
    // handshake) fire only the error: then the socket counts as closed with 1006.
    ws.onerror = () => {
      if (this.#ws !== ws || this.#errorTimer !== null) return;
      this.#errorTimer = this._setTimer(0, () => {
        this.#errorTimer = null;
        if (this.#ws === ws) this.#onDisconnect({ code: CLOSE_ABNORMAL, reason: '', wasClean: false, local: false });
      });
    };
    this.#connectTimer = this._setTimer(this.#opts.connectTimeout, () => {
      this.#connectTimer = null;
      this.#abort('connect timeout');
    });
  }

  #onOpen() {
    this.#opened = true;
    this.#lastReceived = this.#timers.now();
    const frame = { type: 'connect' };
    if (this.#token != null) frame.token = this.#token;
    this.#request(frame, {
      timeout: null, // covered by connectTimeout
      settle: (msg) => {
        if (msg.type === 'connected') this.#onConnected(msg);
        else if (msg.code !== 'unauthorized') this.#abort(`connect refused: ${msg.code}`);
        // unauthorized: the server closes with 4001 next, which decides what follows.
      },
    });
  }

  #onConnected(msg) {
    this._clearTimer(this.#connectTimer);
    this.#connectTimer = null;
    this.#authFailures = 0;
    this.#session = { client: msg.client, node: msg.node, pingIntervalMs: msg.ping_interval_ms };
    this.#setState('connected');
    this.#stableTimer = this._setTimer(this.#opts.stableAfter, () => {
      this.#stableTimer = null;
      this.#attempt = 0;
    });
    this.#armHeartbeat(this.#opts.heartbeat ? this.#opts.heartbeat.interval : 0);
    for (const sub of this.#subs.values()) {
      if (sub.state === 'pending') this._resubscribe(sub);
    }
    const queued = this.#queue;
    this.#queue = [];
    for (const entry of queued) this.#send(entry);
    this._emit('connected', this.session);
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.resolve(this.session);
  }

  #onFrame(data) {
    this.#lastReceived = this.#timers.now();
    if (this.#awaitingPong) {
      // Anything from the server proves the connection alive.
      this.#awaitingPong = false;
      this.#armHeartbeat(this.#opts.heartbeat.interval);
    }
    if (typeof data !== 'string') return; // binary frames are not part of the JSON encoding
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'message':
        this.#subs.get(msg.channel)?._onMessage(msg);
        return;
      case 'gap':
        this.#subs.get(msg.channel)?._onGap(msg);
        return;
      case 'token_expiring':
        this.#refreshToken(msg.expires_in_ms);
        return;
      default:
        if (msg.id != null && this.#pending.has(msg.id)) {
          const entry = this.#pending.get(msg.id);
          this.#pending.delete(msg.id);
          if (entry.timer !== null) this._clearTimer(entry.timer);
          entry.settle(msg);
        } else if (msg.type === 'error') {
          this._emit('error', new PubSubError(msg.code, msg.message ?? msg.code));
        }
    }
  }

  /** Declares the current socket dead (timeouts): close it and handle as a disconnect. */
  #abort(reason) {
    const ws = this.#detachSocket();
    if (!ws) return;
    try {
      ws.close(4000, reason.slice(0, 100));
    } catch {
      // not open
    }
    this.#onDisconnect({ code: CLOSE_ABNORMAL, reason, wasClean: false, local: true }, true);
  }

  #detachSocket() {
    const ws = this.#ws;
    this.#ws = null;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    return ws;
  }

  #onDisconnect(close, detached = false) {
    if (!detached) this.#detachSocket();
    const opened = this.#opened;
    this.#opened = false;
    this.#session = null;
    this.#stopConnectionTimers();
    this.#failPending(new PubSubError('disconnected', `the connection closed (${close.code}${close.reason ? ` ${close.reason}` : ''}) before the server answered`, { closeCode: close.code }));
    for (const sub of this.#subs.values()) sub._reset();

    const hint = parseReconnectHint(close.reason);
    let fatal = null;
    let delay;
    if (close.code === CLOSE_UNAUTHORIZED) {
      this.#authFailures++;
      if (this.#authFailures >= 2) {
        fatal = new PubSubError('unauthorized', this.#opts.getToken ? 'the server rejected the fresh token from getToken (close 4001)' : 'the server rejected the token again (close 4001): pass getToken to renew it', { closeCode: close.code });
      } else {
        if (this.#opts.getToken) this.#token = null; // ask getToken for a fresh one
        delay = 0;
      }
    } else if (close.code === CLOSE_FORBIDDEN || close.code === CLOSE_POLICY) {
      fatal = new PubSubError(close.code === CLOSE_FORBIDDEN ? 'forbidden' : 'policy_violation', `the server refused this client (close ${close.code}${close.reason ? `: ${close.reason}` : ''}); not reconnecting`, { closeCode: close.code });
    } else if (hint !== null) {
      delay = Math.round(hint + this.#random() * this.#opts.hintJitter);
    } else {
      if (this.#attempt >= this.#opts.maxReconnectAttempts) {
        fatal = new PubSubError('reconnect_failed', `gave up after ${this.#attempt} reconnection attempts`, { closeCode: close.code });
      } else {
        delay = this._backoff(this.#attempt++);
      }
    }

    const info = { code: close.code, reason: close.reason, wasClean: close.wasClean, opened, local: close.local, hint, attempt: this.#attempt };
    if (fatal) {
      this.#setState('disconnected');
      this._emit('disconnected', { ...info, willReconnect: false, delay: null });
      this.#fail(fatal);
      return;
    }
    this.#notBefore = hint !== null ? this.#timers.now() + delay : 0;
    if (!this.#env.isOnline()) {
      this.#waitForOnline(info);
      return;
    }
    this.#setState('disconnected');
    this._emit('disconnected', { ...info, willReconnect: true, delay });
    if (this.#state === 'disconnected' && this.#reconnectTimer === null) {
      this.#reconnectTimer = this._setTimer(delay, () => this.#open());
    }
  }

  #waitForOnline(info) {
    this.#waitingForOnline = true;
    this.#setState('disconnected');
    this._emit('disconnected', { ...info, willReconnect: true, delay: null });
  }

  #onOnline() {
    if (this.#state === 'connected') return this.#checkLiveness();
    if (this.#state !== 'disconnected') return;
    // Back online: reconnect now (but not before a server's reconnect hint allows it).
    if (this.#reconnectTimer !== null) this._clearTimer(this.#reconnectTimer);
    const wait = Math.max(0, this.#notBefore - this.#timers.now());
    this.#waitingForOnline = false;
    this.#reconnectTimer = this._setTimer(wait, () => this.#open());
  }

  #onOffline() {
    if (this.#state === 'connected') return this.#checkLiveness();
    if (this.#state === 'disconnected' && this.#reconnectTimer !== null) {
      // Attempts now would fail and burn the backoff: wait for `online` instead.
      this._clearTimer(this.#reconnectTimer);
      this.#reconnectTimer = null;
      this.#waitingForOnline = true;
    }
  }

  /** Pings at once (tab became visible, network changed): a dead connection shows within the pong timeout. */
  #checkLiveness() {
    if (this.#state !== 'connected' || !this.#opts.heartbeat || this.#awaitingPong) return;
    this.#sendPing();
  }

  #armHeartbeat(ms) {
    if (this.#heartbeatTimer !== null) this._clearTimer(this.#heartbeatTimer);
    this.#heartbeatTimer = null;
    if (!this.#opts.heartbeat) return;
    this.#heartbeatTimer = this._setTimer(ms, () => {
      this.#heartbeatTimer = null;
      const quiet = this.#timers.now() - this.#lastReceived;
      const interval = this.#opts.heartbeat.interval;
      if (quiet >= interval) this.#sendPing();
      else this.#armHeartbeat(interval - quiet);
    });
  }

  #sendPing() {
    this.#awaitingPong = true;
    this.#request({ type: 'ping' }, { timeout: null, settle: () => {} });
    if (this.#heartbeatTimer !== null) this._clearTimer(this.#heartbeatTimer);
    this.#heartbeatTimer = this._setTimer(this.#opts.heartbeat.timeout, () => {
      this.#heartbeatTimer = null;
      if (this.#awaitingPong) this.#abort('heartbeat timeout');
    });
  }

  async #refreshToken(expiresInMs) {
    if (!this.#opts.getToken) {
      this._emit('error', new PubSubError('token_expiring', `the token expires in ${expiresInMs} ms and no getToken option is set to renew it`));
      return;
    }
    const gen = this.#gen;
    let token;
    try {
      token = await this.#opts.getToken({ reason: 'refresh', expiresInMs });
    } catch (cause) {
      this._emit('error', new PubSubError('token_failed', `getToken failed to renew the token: ${cause?.message ?? cause}`, { cause }));
      return;
    }
    if (typeof token !== 'string' || token === '') {
      this._emit('error', new PubSubError('token_failed', 'getToken did not return a token'));
      return;
    }
    this.#token = token;
    if (gen !== this.#gen || this.#state !== 'connected') return; // the next connection uses it
    this.#request({ type: 'refresh', token }, {
      timeout: this.#opts.requestTimeout,
      settle: (msg) => {
        if (msg.type === 'refreshed') this._emit('tokenRefreshed', { expiresInMs: msg.expires_in_ms });
        else this._emit('error', new PubSubError(msg.code, `refresh refused: ${msg.message ?? msg.code}`));
      },
      expire: () => this._emit('error', new PubSubError('timeout', 'refresh got no answer')),
    });
  }

  #fail(err) {
    const ws = this.#detachSocket();
    if (ws) {
      try {
        ws.close(1000, 'client gave up');
      } catch {
        // not open
      }
    }
    this.#stopAll();
    this.#failPending(err);
    this.#failQueue(err);
    this.#setState('failed');
    this._emit('error', err);
    this.#rejectWaiters(err);
  }

  #stopConnectionTimers() {
    for (const timer of [this.#connectTimer, this.#stableTimer, this.#heartbeatTimer, this.#errorTimer]) {
      if (timer !== null) this._clearTimer(timer);
    }
    this.#connectTimer = this.#stableTimer = this.#heartbeatTimer = this.#errorTimer = null;
    this.#awaitingPong = false;
  }

  #stopAll() {
    this.#stopConnectionTimers();
    if (this.#reconnectTimer !== null) this._clearTimer(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#waitingForOnline = false;
    this.#session = null;
    this.#opened = false;
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

  /** Sends a command on the open connection and routes its reply (by id) to `settle`. */
  #request(frame, { timeout, settle, expire, fail }) {
    const id = this.#nextId++;
    const entry = { settle, fail: fail ?? (() => {}), timer: null };
    if (timeout != null) {
      entry.timer = this._setTimer(timeout, () => {
        this.#pending.delete(id);
        expire?.();
      });
    }
    this.#pending.set(id, entry);
    this.#sendText(JSON.stringify({ ...frame, id }));
  }

  /** An application command: waits (bounded) for the connection, times out from the call. */
  #call(build, timeout = this.#opts.requestTimeout) {
    return new Promise((resolve, reject) => {
      if (this.#state === 'closed' || this.#state === 'failed') {
        reject(new PubSubError('client_closed', `the client is ${this.#state}`));
        return;
      }
      const entry = {
        build,
        resolve,
        reject,
        timer: null,
        id: null,
        settle: (msg) => {
          if (msg.type === 'error') reject(new PubSubError(msg.code, msg.message ?? msg.code));
          else resolve(msg);
        },
        fail: reject,
      };
      entry.timer = this._setTimer(timeout, () => {
        entry.timer = null;
        if (entry.id !== null) this.#pending.delete(entry.id);
        else this.#queue = this.#queue.filter((e) => e !== entry);
        reject(new PubSubError('timeout', `no answer within ${timeout} ms`));
      });
      if (this.#state === 'connected') this.#send(entry);
      else if (this.#queue.length >= this.#opts.maxQueue) {
        this._clearTimer(entry.timer);
        reject(new PubSubError('queue_full', `${this.#queue.length} commands are already waiting for the connection`));
      } else this.#queue.push(entry);
    });
  }

  #send(entry) {
    entry.id = this.#nextId++;
    this.#pending.set(entry.id, entry);
    this.#sendText(entry.build(entry.id));
  }

  /** Never throws: a frame for a closing socket is dropped, and its request fails with the close. */
  #sendText(text) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN) return false;
    try {
      ws.send(text);
      return true;
    } catch {
      return false;
    }
  }

  #failPending(err) {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const entry of pending) {
      if (entry.timer !== null) this._clearTimer(entry.timer);
      entry.fail(err);
    }
  }

  #failQueue(err) {
    const queued = this.#queue;
    this.#queue = [];
    for (const entry of queued) {
      if (entry.timer !== null) this._clearTimer(entry.timer);
      entry.reject(err);
    }
  }
}
