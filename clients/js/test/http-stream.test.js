// Unit tests of the HTTP-streaming transport and the transport fallback, on a fake fetch (real
// Response and ReadableStream objects) and fake timers: framing, command order and batching,
// a full session queue, the close line, and which transport each attempt uses.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { HttpStreamTransport, httpBase } from '../src/transports/http-stream.js';
import { transportFor } from '../src/transport.js';

const tick = () => new Promise((r) => setTimeout(r, 0));

/** A fake fetch: GET /stream answers a stream the test writes lines to; POSTs are recorded and answered by `answer`. */
function fakeFetch({ status = 200, answer = () => 202 } = {}) {
  const posts = [];
  let controller;
  const pending = [];
  const fetch = async (url, init = {}) => {
    if ((init.method ?? 'GET') === 'GET') {
      const body = new ReadableStream({ start: (c) => (controller = c) });
      return new Response(body, { status });
    }
    const post = { url, body: init.body, headers: init.headers };
    posts.push(post);
    const code = answer(post, posts.length);
    if (code === 'hold') return new Promise((resolve) => pending.push(() => resolve(new Response('{}', { status: 202 }))));
    return new Response('{}', { status: code });
  };
  const encoder = new TextEncoder();
  return {
    fetch,
    posts,
    write: (text) => controller.enqueue(encoder.encode(text)),
    end: () => controller.close(),
    release: () => pending.shift()?.(),
  };
}

function handlers() {
  const seen = { opened: 0, messages: [], closes: [] };
  return {
    seen,
    onOpen: () => seen.opened++,
    onMessage: (data) => seen.messages.push(data),
    onClose: (close) => seen.closes.push(close),
  };
}

const timers = () => {
  const due = [];
  return { due, setTimer: (ms, fn) => due.push({ ms, fn }) && due.length, clearTimer: () => {} };
};

describe('HttpStreamTransport', () => {
  test('URLs map ws to http and wss to https', () => {
    assert.equal(httpBase('ws://h:8080/ws'), 'http://h:8080');
    assert.equal(httpBase('wss://h/ws'), 'https://h');
    assert.equal(httpBase('https://h/anything'), 'https://h');
    assert.throws(() => httpBase('ftp://h'), TypeError);
  });

  test('opens at the session line, passes messages on (lines cut across chunks), counts pings as traffic', async () => {
    const net = fakeFetch();
    const h = handlers();
    const t = new HttpStreamTransport(net.fetch, 'ws://gw/ws', h, timers());
    assert.equal(t.send('{}'), false, 'nothing is sent before the session line');
    await tick();
    net.write('{"type":"session","session":"abc.gw-1"}\n{"type":"subscribed","id":1,');
    await tick();
    assert.equal(h.seen.opened, 1);
    net.write('"channel":"a"}\n{"type":"ping"}\n');
    await tick();
    assert.deepEqual(h.seen.messages, ['{"type":"subscribed","id":1,"channel":"a"}', null]);
  });

  test('commands keep their order: one POST at a time, what waits goes in the next one', async () => {
    const net = fakeFetch({ answer: () => 'hold' });
    const h = handlers();
    const t = new HttpStreamTransport(net.fetch, 'ws://gw/ws', h, timers());
    await tick();
    net.write('{"type":"session","session":"s1.gw-1"}\n');
    await tick();
    assert.equal(t.send('{"id":1}'), true);
    t.send('{"id":2}');
    t.send('{"id":3}');
    await tick();
    assert.equal(net.posts.length, 1);
    assert.equal(net.posts[0].url, 'http://gw/stream/commands?session=s1.gw-1');
    assert.equal(net.posts[0].headers['Content-Type'], 'text/plain');
    assert.equal(net.posts[0].body, '{"id":1}\n');
    net.release();
    await tick();
    await tick();
    assert.equal(net.posts.length, 2);
    assert.equal(net.posts[1].body, '{"id":2}\n{"id":3}\n');
  });

  test('a full session queue (429) is retried after a second; a refused POST ends the connection', async () => {
    const net = fakeFetch({ answer: (_, n) => (n === 1 ? 429 : n === 2 ? 202 : 404) });
    const h = handlers();
    const clock = timers();
    const t = new HttpStreamTransport(net.fetch, 'ws://gw/ws', h, clock);
    await tick();
    net.write('{"type":"session","session":"s.gw"}\n');
    await tick();
    t.send('{"id":1}');
    await tick();
    await tick();
    assert.equal(clock.due.length, 1);
    assert.equal(clock.due[0].ms, 1000);
    clock.due[0].fn();
    await tick();
    await tick();
    assert.equal(net.posts.length, 2);
    assert.equal(net.posts[1].body, '{"id":1}\n', 'the same command again');
    t.send('{"id":2}');
    await tick();
    await tick();
    assert.deepEqual(h.seen.closes, [{ code: 1006, reason: 'POST /stream/commands answered 404', wasClean: false }]);
    assert.equal(t.send('{"id":3}'), false);
  });

  test('the close line is a close, its reconnect hint a JSON reason; a stream without a session line or cut short is 1006', async () => {
    const net = fakeFetch();
    const h = handlers();
    new HttpStreamTransport(net.fetch, 'ws://gw/ws', h, timers());
    await tick();
    net.write('{"type":"session","session":"s.gw"}\n{"type":"close","code":1012,"reason":"draining","reconnect_after_ms":700}\n');
    await tick();
    assert.deepEqual(h.seen.closes, [{ code: 1012, reason: '{"reason":"draining","reconnect_after_ms":700}', wasClean: true }]);

    const other = fakeFetch();
    const h2 = handlers();
    new HttpStreamTransport(other.fetch, 'ws://gw/ws', h2, timers());
    await tick();
    other.write('{"type":"subscribed"}\n');
    await tick();
    assert.equal(h2.seen.opened, 0);
    assert.equal(h2.seen.closes[0].code, 1006);

    const cut = fakeFetch();
    const h3 = handlers();
    new HttpStreamTransport(cut.fetch, 'ws://gw/ws', h3, timers());
    await tick();
    cut.write('{"type":"session","session":"s.gw"}\n');
    cut.end();
    await tick();
    await tick();
    assert.equal(h3.seen.closes[0].code, 1006);

    const refused = fakeFetch({ status: 503 });
    const h4 = handlers();
    new HttpStreamTransport(refused.fetch, 'ws://gw/ws', h4, timers());
    await tick();
    await tick();
    assert.deepEqual(h4.seen.closes, [{ code: 1006, reason: 'GET /stream answered 503', wasClean: false }]);
  });
});

describe('the sse transport', () => {
  class FakeEventSource {
    static last = null;
    constructor(url) {
      this.url = url;
      this.listeners = {};
      this.closed = false;
      FakeEventSource.last = this;
    }
    addEventListener(name, fn) {
      this.listeners[name] = fn;
    }
    close() {
      this.closed = true;
    }
  }

  test('GET /stream?format=sse: events are messages, POSTs carry commands, the close event ends it', async () => {
    const net = fakeFetch();
    const factory = transportFor({ transports: ['sse'], fetch: net.fetch, EventSource: FakeEventSource });
    const h = handlers();
    const t = factory('wss://gw/ws', h, timers());
    await tick();
    const es = FakeEventSource.last;
    assert.equal(es.url, 'https://gw/stream?format=sse');
    es.onmessage({ data: '{"type":"session","session":"s.gw"}' });
    assert.equal(h.seen.opened, 1);
    es.onmessage({ data: '{"type":"pong","id":1}' });
    assert.deepEqual(h.seen.messages, ['{"type":"pong","id":1}']);
    t.send('{"type":"ping","id":2}');
    await tick();
    assert.equal(net.posts[0].url, 'https://gw/stream/commands?session=s.gw');
    es.listeners.close({ data: '{"code":1012,"reason":"draining","reconnect_after_ms":5}' });
    assert.deepEqual(h.seen.closes, [{ code: 1012, reason: '{"reason":"draining","reconnect_after_ms":5}', wasClean: true }]);
    assert.equal(es.closed, true, 'no reconnect of its own into a new session');
  });

  test('an error ends the connection (1006) instead of letting EventSource reconnect', async () => {
    const factory = transportFor({ transports: ['sse'], fetch: fakeFetch().fetch, EventSource: FakeEventSource });
    const h = handlers();
    factory('ws://gw/ws', h, timers());
    await tick();
    FakeEventSource.last.onerror();
    assert.equal(h.seen.closes[0].code, 1006);
    assert.equal(FakeEventSource.last.closed, true);
  });
});

describe('transport fallback', () => {
  /** A WebSocket class whose sockets never open: each fails at once. */
  class RefusedWebSocket {
    static made = 0;
    constructor() {
      RefusedWebSocket.made++;
      setTimeout(() => this.onclose?.({ code: 1006, reason: '', wasClean: false }), 0);
    }
    close() {}
  }

  test('an attempt that never opened moves to the next transport; one that opened is kept', async () => {
    const net = fakeFetch();
    const factory = transportFor({ transports: ['websocket', 'http_stream'], WebSocket: RefusedWebSocket, fetch: net.fetch });
    assert.equal(factory.current(), 'websocket');
    const h = handlers();
    factory('ws://gw/ws', h, timers());
    await tick();
    assert.equal(h.seen.closes.length, 1);
    assert.equal(factory.current(), 'http_stream');
    const h2 = handlers();
    const stream = factory('ws://gw/ws', h2, timers());
    await tick();
    net.write('{"type":"session","session":"s.gw"}\n');
    await tick();
    assert.equal(h2.seen.opened, 1);
    stream.close(1000, '');
    assert.equal(factory.current(), 'http_stream', 'it opened: the next attempt uses it again');
    // A local close before opening (connectTimeout) also moves on.
    const h3 = handlers();
    factory('ws://gw/ws', h3, timers()).close(4000, 'connect timeout');
    assert.equal(factory.current(), 'websocket');
  });

  test('defaults: websocket, http_stream, sse; only websocket when a WebSocket is passed', () => {
    assert.equal(transportFor({ fetch: fakeFetch().fetch, WebSocket: RefusedWebSocket }).current(), 'websocket');
    assert.throws(() => transportFor({ transports: ['carrier_pigeon'] }), TypeError);
    assert.throws(() => transportFor({ transports: ['websocket'], WebSocket: 'nope' }), { code: 'no_websocket' });
  });
});
