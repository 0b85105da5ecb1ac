// Subscription: one channel subscription of a Client. It owns the channel's position
// ({epoch, offset}) and the recovery bookkeeping: the `since` of each resubscribe, dropping
// duplicates, noticing when a replay is complete, gaps, and retrying transient refusals. It
// also asks for the channel's presence and delivers its join and leave events.

import { fromBase64 } from './base64.js';
import { Emitter } from './emitter.js';
import { PubSubError } from './errors.js';
import { channelCommand, parseMember } from './protocol.js';

/**
 * One channel subscription of a Client. Created by client.subscribe(), or by the client itself
 * when the server subscribed the connection (POST /api/subscribe: `server` is then true); lives
 * across reconnects until unsubscribe(), the server's unsubscribe (POST /api/unsubscribe), or a
 * permanent refusal by the server.
 *
 * Events (also settable as on* options of subscribe()): message(data, meta), subscribed(info),
 * recovered(info), recoveryFailed(info), gap(info), join(member, {first}), leave(member,
 * {last}), unsubscribed({channel, server}), error(err).
 */
export class Subscription extends Emitter {
  #client;
  #server;
  #state = 'pending';
  #position = null;
  #recovering = null;
  #retries = 0;
  #retryTimer = null;
  #resolveReady;
  #rejectReady;

  /** @internal */
  constructor(client, channel, options, { server = false } = {}) {
    super();
    this.#client = client;
    this.#server = server;
    this.channel = channel;
    for (const [option, event] of [
      ['onMessage', 'message'],
      ['onSubscribed', 'subscribed'],
      ['onRecovered', 'recovered'],
      ['onRecoveryFailed', 'recoveryFailed'],
      ['onGap', 'gap'],
      ['onJoin', 'join'],
      ['onLeave', 'leave'],
      ['onUnsubscribed', 'unsubscribed'],
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

  /**
   * True for a subscription the server made (POST /api/subscribe) and the client adopted;
   * false for one made by client.subscribe(), even if the server subscribed its channel too.
   */
  get server() {
    return this.#server;
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
    const done = this.#client._unsubscribed(this, wasLive);
    this._emit('unsubscribed', { channel: this.channel, server: false });
    return done;
  }

  /**
   * Who is in the channel: resolves with [{client, user, info?}], one per connection. Only
   * while `subscribed` (else rejects with `not_subscribed`); rejects with the server's code
   * (`not_available`: the namespace keeps no presence; `forbidden`, `unavailable`, ...),
   * `timeout`, `disconnected`, `client_closed`.
   */
  presence({ timeout } = {}) {
    return this.#query('presence', timeout).then((msg) => (Array.isArray(msg.members) ? msg.members.map(parseMember) : []));
  }

  /** How many connections and distinct users are in the channel: resolves with {clients, users}. Like presence(). */
  presenceStats({ timeout } = {}) {
    return this.#query('presence_stats', timeout).then((msg) => ({ clients: msg.clients, users: msg.users }));
  }

  #query(type, timeout) {
    if (this.#state !== 'subscribed') {
      return Promise.reject(new PubSubError('not_subscribed', `${type} needs a subscribed subscription; ${this.channel} is ${this.#state}`, { channel: this.channel }));
    }
    return this.#client._call(channelCommand(type, this.channel), timeout);
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
    if (msg.server === true) reply.server = true;
    let recovery = null;
    if (since && msg.recovered === true) {
      // Replayed messages follow; our position stays at `since` and advances with them.
      // An empty epoch at offset 0 is a channel that had no stream yet: its first stream continues it.
      const continues = this.#position.epoch === msg.epoch || (this.#position.epoch === '' && this.#position.offset === 0);
      const missed = continues ? msg.offset - this.#position.offset : 0;
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

  /**
   * A `subscribed` notice with `server: true` (POST /api/subscribe) for this channel: the
   * connection is subscribed at the notice's position, as with the reply to our own subscribe.
   */
  _onServerSubscribed(msg) {
    if (this.#state === 'subscribed') {
      // The server skips connections already subscribed, so this is not expected; never move back.
      const known = this.#position;
      if (!(known && known.epoch === msg.epoch && known.offset >= msg.offset)) this.#position = { epoch: msg.epoch, offset: msg.offset };
      return;
    }
    if (this.#state !== 'pending' && this.#state !== 'subscribing') return; // unsubscribed or failed
    // The server subscribed the connection before our own subscribe (if one is in flight) reached
    // it: that one is answered `already_subscribed`, which _onReply ignores once we are subscribed.
    // With a known position this is a resume without replay: it continues only at the same place.
    const since = this.#position ? { ...this.#position } : null;
    this.#clearRetry();
    this.#state = 'subscribing';
    const reply = { type: 'subscribed', channel: this.channel, epoch: msg.epoch, offset: msg.offset, server: true };
    if (since) {
      reply.recovered = (since.epoch === msg.epoch && since.offset === msg.offset) || (since.epoch === '' && since.offset === 0 && msg.offset === 0);
    }
    this._onReply(reply, since);
  }

  /**
   * An `unsubscribed` notice with `server: true` (POST /api/unsubscribe): the connection left
   * the channel; the subscription ends and is not resubscribed. False if it was not subscribed
   * (the notice is about an earlier subscription of the channel).
   */
  _onServerUnsubscribed() {
    if (this.#state !== 'subscribed') return false;
    this.#end('unsubscribed');
    this.#client._forget(this);
    this._emit('unsubscribed', { channel: this.channel, server: true });
    return true;
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

  /** A `join` or `leave` event of the channel's presence. */
  _onPresence(msg) {
    if (this.#state !== 'subscribed') return;
    if (msg.type === 'join') this._emit('join', parseMember(msg.member), { first: msg.first === true });
    else this._emit('leave', parseMember(msg.member), { last: msg.last === true });
  }
}
