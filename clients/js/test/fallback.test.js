// The transport fallback against real processes: two Redis-backed nodes behind a real HAProxy
// that refuses WebSocket upgrades and balances round-robin with no sticky sessions (the proxy
// the HTTP-streaming transport is for). The client falls back to HTTP streaming by itself, its
// POSTs land on both nodes (the gateway forwards them to the session's node), and when the
// session's node is SIGKILLed while a backend keeps publishing, it reconnects over HTTP
// streaming and recovers every message once, in order. The same in Chromium: browser.test.js.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Client } from '../src/pubsub.js';
import { Gateway, HaProxy, Redis, stopAll, waitFor } from './support/processes.js';
import { collect, range, record } from './support/recorder.js';

const clients = [];
let nodes;
let haproxy;

before(async () => {
  const redis = await Redis.start();
  nodes = await Promise.all([1, 2].map((i) => Gateway.start(['--redis-url', redis.url, '--node-id', `fb-${i}`])));
  haproxy = await HaProxy.startBlockingUpgrades(nodes);
  await waitFor(async () => (await fetch(`${haproxy.httpUrl}/readyz`).catch(() => null))?.status === 200, { message: 'HAProxy forwards to the nodes' });
});

after(async () => {
  for (const c of clients) c.close();
  await stopAll();
});

const forwarded = async (node) => {
  const text = await fetch(`${node.httpUrl}/metrics`).then((r) => r.text());
  const line = text.split('\n').find((l) => l.startsWith('gateway_stream_commands_forwarded_total '));
  return Number(line?.split(' ')[1] ?? 0);
};

test('a blocked upgrade falls back to HTTP streaming, POSTs reach the session from any node, and a killed node loses nothing', async () => {
  const c = new Client(haproxy.wsUrl, { minReconnectDelay: 50, maxReconnectDelay: 400, requestTimeout: 5000 });
  clients.push(c);
  const log = record(c);
  const sub = c.subscribe('fallback:news');
  const got = collect(sub);
  await c.connect();
  await sub.ready;
  assert.equal(c.transport, 'http_stream');
  assert.deepEqual(log.of('connecting').map((e) => e.transport), ['websocket', 'http_stream'], 'one refused upgrade, then HTTP streaming');

  // Client publications and pings are POSTs: round-robin puts some on the other node.
  for (const n of range(1, 6)) await c.publish('fallback:news', { n });
  for (let i = 0; i < 4; i++) await c.ping();
  await got.until(6);
  const victim = nodes.find((n) => n.nodeId === c.session.node);
  const survivor = nodes.find((n) => n !== victim);
  assert.ok((await forwarded(survivor)) > 0, 'the other node forwarded POSTs to the session');

  await victim.kill('SIGKILL');
  for (const n of range(7, 12)) await survivor.publish('fallback:news', { n });
  await waitFor(() => c.state === 'connected' && got.messages.length >= 12, {
    timeout: 20000,
    message: () => `reconnected and recovered (state ${c.state}, offsets ${got.offsets()})`,
  });
  assert.equal(c.transport, 'http_stream', 'it stays on the transport that worked');
  assert.equal(c.session.node, survivor.nodeId);
  for (const n of range(13, 14)) await c.publish('fallback:news', { n });
  await got.until(14);
  assert.deepEqual(got.offsets(), range(1, 14), 'every message exactly once, in order');
  assert.deepEqual(got.values(), range(1, 14).map((n) => ({ n })));
  assert.equal(got.recoveryFailed.length, 0);
  await victim.spawn();
});
