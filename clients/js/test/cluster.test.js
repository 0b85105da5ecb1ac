// Integration tests with Redis-backed nodes: three nodes behind HAProxy (the shipped
// deploy/haproxy/haproxy.cfg) where the client's node is killed or drained, and a node whose
// Redis loses its data (gap notices).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Client } from '../src/pubsub.js';
import { Gateway, HaProxy, Redis, freePort, gatewayHas, stopAll, waitFor } from './support/processes.js';
import { collect, range, record } from './support/recorder.js';

const clients = [];
after(async () => {
  for (const c of clients) c.close();
  await stopAll();
});

/**
 * A WebSocket class with a switch: while `gate.open` is false, new sockets go to a port where
 * nothing listens (the client's network is down). Lets a test publish while the client is
 * provably disconnected.
 */
async function gatedWebSocket() {
  const nowhere = `ws://127.0.0.1:${await freePort()}/ws`;
  const gate = { open: true };
  class GatedWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(gate.open ? url : nowhere, protocols);
    }
  }
  return { gate, GatedWebSocket };
}

function client(url, options = {}) {
  const c = new Client(url, { minReconnectDelay: 50, maxReconnectDelay: 500, requestTimeout: 5000, ...options });
  clients.push(c);
  return c;
}

describe('three Redis-backed nodes behind HAProxy', () => {
  let redis;
  let nodes;
  let haproxy;

  before(async () => {
    redis = await Redis.start();
    const drainFlags = gatewayHas('--drain-reconnect-jitter') ? ['--drain-reconnect-jitter', '1500ms'] : [];
    nodes = await Promise.all(
      [1, 2, 3].map((i) => Gateway.start(['--redis-url', redis.url, '--node-id', `node-${i}`, '--drain-seconds', '1', ...drainFlags])),
    );
    haproxy = await HaProxy.start(nodes);
    await waitFor(async () => (await fetch(`${haproxy.httpUrl}/readyz`)).status === 200, { message: 'HAProxy forwards to the nodes' });
  });

  const nodeOf = (c) => nodes.find((n) => n.nodeId === c.session?.node);
  const another = (node) => nodes.find((n) => n !== node && n.running);

  test('the node the client is on is killed: it reconnects through HAProxy to another node and recovers every message', async () => {
    const { gate, GatedWebSocket } = await gatedWebSocket();
    const c = client(haproxy.wsUrl, { WebSocket: GatedWebSocket });
    const log = record(c);
    const sub = c.subscribe('cluster:kill');
    const got = collect(sub);
    await c.connect();
    await sub.ready;
    const victim = nodeOf(c);
    const survivor = another(victim);
    assert.ok(victim, `connected to a known node (${c.session.node})`);
    for (const n of range(1, 5)) await survivor.publish('cluster:kill', { n });
    await got.until(5);

    gate.open = false;
    await victim.kill('SIGKILL');
    await log.nth('disconnected', 1);
    for (const n of range(6, 10)) await survivor.publish('cluster:kill', { n });
    await waitFor(() => log.count('connecting') >= 3, { message: 'failed attempts while the network is down' });
    gate.open = true;

    await waitFor(() => c.state === 'connected' && got.messages.length >= 10, { timeout: 20000, message: () => `reconnected and recovered (state ${c.state}, ${got.messages.length} messages)` });
    assert.notEqual(c.session.node, victim.nodeId, 'on another node');
    for (const n of range(11, 12)) await survivor.publish('cluster:kill', { n });
    await got.until(12);
    assert.deepEqual(got.offsets(), range(1, 12));
    assert.deepEqual(got.values(), range(1, 12).map((n) => ({ n })));
    assert.deepEqual(got.recovered.map((r) => [r.offset, r.replayed]), [[10, 5]]);
    assert.equal(got.recoveryFailed.length, 0);
    assert.equal(log.of('disconnected')[0].code, 1006);
    c.close();
    // Back to three nodes for the next test.
    await victim.spawn();
  });

  test('drain (SIGTERM): close 1012 with reconnect_after_ms is honoured, then the client recovers on another node', { skip: !gatewayHas('--drain-reconnect-jitter') && 'this gateway binary has no --drain-reconnect-jitter (drain hint) yet' }, async () => {
    await waitFor(async () => (await fetch(`${haproxy.httpUrl}/readyz`)).status === 200, { message: 'HAProxy forwards' });
    const c = client(haproxy.wsUrl, { hintJitter: 100 });
    const log = record(c);
    const sub = c.subscribe('cluster:drain');
    const got = collect(sub);
    await c.connect();
    await sub.ready;
    const drained = nodeOf(c);
    const survivor = another(drained);
    for (const n of range(1, 3)) await survivor.publish('cluster:drain', { n });
    await got.until(3);

    await drained.kill('SIGTERM');
    const d = await log.nth('disconnected', 1, 10000);
    const closedAt = log.timed('disconnected')[0].at;
    assert.equal(d.code, 1012);
    assert.equal(typeof d.hint, 'number', `the close reason carries a hint: ${JSON.stringify(d.reason)}`);
    assert.equal(JSON.parse(d.reason).reason, 'draining');
    assert.ok(d.hint >= 0 && d.hint <= 1500, `hint ${d.hint} within --drain-reconnect-jitter`);
    assert.ok(d.delay >= d.hint && d.delay <= d.hint + 100, `delay ${d.delay} = hint ${d.hint} + jitter`);
    assert.equal(d.willReconnect, true);
    for (const n of range(4, 6)) await survivor.publish('cluster:drain', { n });
    const reconnecting = await log.nth('connecting', 2, 10000);
    const waited = log.timed('connecting')[1].at - closedAt;
    assert.ok(waited >= d.hint - 5, `waited ${waited} ms, hint ${d.hint} ms`);
    assert.equal(reconnecting.attempt, 0, 'a hint does not count as a failed attempt');
    await waitFor(() => c.state === 'connected' && got.messages.length >= 6, { timeout: 20000, message: () => `recovered after the drain (${got.offsets()})` });
    assert.notEqual(c.session.node, log.of('connected')[0].node);
    assert.deepEqual(got.offsets(), range(1, 6));
    assert.equal(await drained.waitExit(15000), 0, 'the drained node exits 0');
  });
});

describe('a node whose Redis loses its data', () => {
  test('the gap notice reaches onGap, the position moves to the new epoch, the stream continues', async () => {
    const redis = await Redis.start();
    const gateway = await Gateway.start(['--redis-url', redis.url, '--node-id', 'gap']);
    const c = client(gateway.wsUrl);
    const sub = c.subscribe('gap:news');
    const got = collect(sub);
    await c.connect();
    await sub.ready;
    for (const n of range(1, 3)) await gateway.publish('gap:news', n);
    await got.until(3);
    const oldEpoch = got.messages[0].epoch;
    await redis.restart(); // without persistence: the history and the offsets are gone
    await waitFor(() => got.gaps.length === 1, { timeout: 15000, message: 'a gap notice' });
    // The channel has no stream any more (the empty epoch at 0); the next stream continues that.
    const gap = got.gaps[0];
    assert.deepEqual([gap.epoch, gap.offset], ['', 0]);
    assert.deepEqual(sub.position, { epoch: '', offset: 0 });
    await gateway.waitReady();
    for (const n of range(4, 6)) await gateway.publish('gap:news', n);
    await got.until(6);
    const newEpoch = got.messages[3].epoch;
    assert.ok(newEpoch !== oldEpoch && newEpoch !== '', `a fresh epoch: ${newEpoch}`);
    assert.equal(got.gaps.length, 1, 'the new stream continues the gap without another');
    assert.deepEqual(got.messages.map((m) => [m.epoch === oldEpoch ? 'old' : m.epoch === newEpoch ? 'new' : '?', m.offset, m.data]), [
      ['old', 1, 1],
      ['old', 2, 2],
      ['old', 3, 3],
      ['new', 1, 4],
      ['new', 2, 5],
      ['new', 3, 6],
    ]);
    c.close();
    await gateway.kill();
    await redis.kill();
  });
});
