// Fakes for the unit tests: a clock whose timers run only when the test advances it, a
// WebSocket the test drives from the server side, and a browser-like environment.

import { Client } from '../../src/pubsub.js';

export class FakeClock {
  now = 0;
  #timers = [];
  #seq = 0;

  setTimeout = (fn, ms) => {
    const timer = { at: this.now + Math.max(0, Number(ms) || 0), fn, id: ++this.#seq };
    this.#timers.push(timer);
    return timer.id;
  };

  clearTimeout = (id) => {
    this.#timers = this.#timers.filter((t) => t.id !== id);
  };

  /** Moves time forward by `ms`, running every timer that comes due, in order. */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      const due = this.#timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.#timers = this.#timers.filter((t) => t !== due);
      this.now = due.at;
      due.fn();
    }
    this.now = end;
  }

  /** Delays (from now) of the pending timers, soonest first. */
  get pending() {
    return this.#timers.map((t) => t.at - this.now).sort((a, b) => a - b);
  }
}

/** A WebSocket class whose instances are recorded in `sockets`. */
export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    readyState = 0;
    sent = [];
    closedByClient = null;
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;
    sendThrows = false;

    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      sockets.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
      if (this.sendThrows) throw new Error('send failed');
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.closedByClient = { code, reason };
      this.readyState = 3;
    }

    // ---- the server side ----
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }

    receive(message) {
      this.onmessage?.({ data: typeof message === 'string' ? message : JSON.stringify(message) });
    }

    serverClose(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }

    /** The upgrade failed (refused, 503, network): close 1006 without open. */
    fail() {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({ code: 1006, reason: '', wasClean: false });
    }

    sentOf(type) {
      return this.sent.filter((m) => m.type === type);
    }

    last(type) {
      const all = this.sentOf(type);
      return all[all.length - 1];
    }

    /** Opens and answers the client's connect. */
    accept({ node = 'gw-1', pingIntervalMs = 25000 } = {}) {
      this.open();
      const connect = this.last('connect');
      if (!connect) throw new Error('the client sent no connect');
      this.receive({ type: 'connected', id: connect.id, client: `${node}-1`, node, ping_interval_ms: pingIntervalMs });
      return connect;
    }

    /** Answers every unanswered subscribe with `reply(frame)`'s fields. */
    answerSubscribes(reply) {
      for (const frame of this.sentOf('subscribe')) {
        if (frame.answered) continue;
        frame.answered = true;
        this.receive({ type: 'subscribed', id: frame.id, channel: frame.channel, ...reply(frame) });
      }
    }
  }
  return { FakeWebSocket, sockets };
}

export function fakeEnvironment() {
  const env = {
    online: true,
    handlers: null,
    isOnline: () => env.online,
    listen(handlers) {
      env.handlers = handlers;
      return () => {
        env.handlers = null;
      };
    },
    goOffline() {
      env.online = false;
      env.handlers?.offline();
    },
    goOnline() {
      env.online = true;
      env.handlers?.online();
    },
    becomeVisible() {
      env.handlers?.visible();
    },
  };
  return env;
}

/** A client on fakes, recording every event. */
export function setup(options = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const env = fakeEnvironment();
  const rng = { value: 0.5 };
  const client = new Client('ws://gateway.test/ws', {
    WebSocket: FakeWebSocket,
    timers: { setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, now: () => clock.now },
    random: () => rng.value,
    environment: env,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    stableAfter: 5000,
    hintJitter: 200,
    connectTimeout: 3000,
    requestTimeout: 2000,
    heartbeat: { interval: 1000, timeout: 500 },
    ...options,
  });
  const events = [];
  for (const name of ['state', 'connecting', 'connected', 'disconnected', 'error', 'tokenRefreshed']) {
    client.on(name, (payload) => events.push({ name, payload }));
  }
  const of = (name) => events.filter((e) => e.name === name).map((e) => e.payload);
  const socket = () => sockets[sockets.length - 1];
  return { client, clock, sockets, socket, env, rng, events, of };
}

/** Lets pending promise callbacks (getToken, then-chains) run. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/** The epoch the fake server's subscribe answers use. */
export const EPOCH = 'Ab3dE6gH9jKm';

/** Connects a fresh client and answers its connect. */
export function connected(options) {
  const t = setup(options);
  t.client.connect();
  t.socket().accept();
  return t;
}
