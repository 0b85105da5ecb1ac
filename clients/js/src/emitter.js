// Emitter: the minimal event emitter that Client and Subscription extend. A throwing
// listener is reported (as an `error` event, or on the console), never breaks the client.

import { PubSubError } from './errors.js';

/** Minimal event emitter: on() returns a function that removes the listener. */
export class Emitter {
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
