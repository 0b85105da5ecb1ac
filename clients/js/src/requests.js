// Requests: the Client's commands and their replies. It owns the command ids, the table of
// commands waiting for a reply (routed back by id, each with its timeout), and the bounded
// queue of application commands waiting for the connection.

import { PubSubError } from './errors.js';

export class Requests {
  #nextId = 1;
  #pending = new Map();
  #queue = [];
  #setTimer;
  #clearTimer;
  #sendText;
  #maxQueue;

  /**
   * @param {object} io
   * @param {(ms: number, fn: () => void) => unknown} io.setTimer
   * @param {(handle: unknown) => void} io.clearTimer
   * @param {(text: string) => boolean} io.sendText  sends on the current connection, never throws
   * @param {number} io.maxQueue  most commands waiting for the connection
   */
  constructor({ setTimer, clearTimer, sendText, maxQueue }) {
    this.#setTimer = setTimer;
    this.#clearTimer = clearTimer;
    this.#sendText = sendText;
    this.#maxQueue = maxQueue;
  }

  /** Sends a command on the open connection and routes its reply (by id) to `settle`. */
  request(frame, { timeout, settle, expire, fail }) {
    const id = this.#nextId++;
    const entry = { settle, fail: fail ?? (() => {}), timer: null };
    if (timeout != null) {
      entry.timer = this.#setTimer(timeout, () => {
        this.#pending.delete(id);
        expire?.();
      });
    }
    this.#pending.set(id, entry);
    this.#sendText(JSON.stringify({ ...frame, id }));
  }

  /**
   * An application command: sent now if `connected`, else queued (bounded) until flush();
   * times out from the call. `build(id)` returns the command's text. Resolves with the reply;
   * rejects with the server's error, `timeout`, `queue_full`, or what failPending/failQueue give.
   */
  call(build, timeout, connected) {
    return new Promise((resolve, reject) => {
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
      entry.timer = this.#setTimer(timeout, () => {
        entry.timer = null;
        if (entry.id !== null) this.#pending.delete(entry.id);
        else this.#queue = this.#queue.filter((e) => e !== entry);
        reject(new PubSubError('timeout', `no answer within ${timeout} ms`));
      });
      if (connected) this.#send(entry);
      else if (this.#queue.length >= this.#maxQueue) {
        this.#clearTimer(entry.timer);
        reject(new PubSubError('queue_full', `${this.#queue.length} commands are already waiting for the connection`));
      } else this.#queue.push(entry);
    });
  }

  /** The connection is up: sends the queued commands, in order. */
  flush() {
    const queued = this.#queue;
    this.#queue = [];
    for (const entry of queued) this.#send(entry);
  }

  /** Routes a reply to its command; false if `msg` answers no command waiting for a reply. */
  settle(msg) {
    if (msg.id == null || !this.#pending.has(msg.id)) return false;
    const entry = this.#pending.get(msg.id);
    this.#pending.delete(msg.id);
    if (entry.timer !== null) this.#clearTimer(entry.timer);
    entry.settle(msg);
    return true;
  }

  /** Fails every command that was sent and not answered (the connection went away). */
  failPending(err) {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const entry of pending) {
      if (entry.timer !== null) this.#clearTimer(entry.timer);
      entry.fail(err);
    }
  }

  /** Fails every command still waiting for the connection (the client closed or failed). */
  failQueue(err) {
    const queued = this.#queue;
    this.#queue = [];
    for (const entry of queued) {
      if (entry.timer !== null) this.#clearTimer(entry.timer);
      entry.reject(err);
    }
  }

  #send(entry) {
    entry.id = this.#nextId++;
    this.#pending.set(entry.id, entry);
    this.#sendText(entry.build(entry.id));
  }
}
