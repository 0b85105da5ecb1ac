// Integration tests of server-side subscriptions against a real gateway process (GATEWAY_BIN)
// with token authentication and an API key: a backend subscribes a user's connections with
// POST /api/subscribe, the client adopts the subscription (serverSubscribed), receives
// publications, recovers what was published while it was reconnecting (after POST
// /api/disconnect with 4010), and POST /api/unsubscribe ends it (serverUnsubscribed).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Client } from '../src/pubsub.js';
import { Gateway, JWT_SECRET, freePort, mintToken, sleep, stopAll, waitFor } from './support/processes.js';
import { collect, range, record } from './support/recorder.js';

const API_KEY = 'js-client-test-api-key';

const clients = [];
after(async () => {
  for (const c of clients) c.close();
  await stopAll();
});

function client(url, options = {}) {
  const c = new Client(url, { minReconnectDelay: 50, maxReconnectDelay: 400, requestTimeout: 5000, ...options });
  clients.push(c);
  return c;
}

/**
 * A WebSocket class with a switch: while `gate.open` is false, new sockets go to a port where
 * nothing listens, so the test can publish while the client is provably disconnected.
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

/** Records a client's serverSubscribed/serverUnsubscribed events (the Subscriptions). */
function serverEvents(c) {
  const subscribed = [];
  const unsubscribed = [];
  c.on('serverSubscribed', (sub) => subscribed.push(sub));
  c.on('serverUnsubscribed', (sub) => unsubscribed.push(sub));
  return { subscribed, unsubscribed };
}

describe('server-side subscriptions', () => {
  let gateway;
  let skip = false;

  /** POST /api/<path> with the API key (unless `key` is null); returns {status, body}. */
  async function api(path, body, { key = API_KEY } = {}) {
    const headers = { 'content-type': 'application/json' };
    if (key) headers.authorization = `Bearer ${key}`;
    const answer = await fetch(`${gateway.httpUrl}/api/${path}`, { method: 'POST', headers, body: JSON.stringify(body) });
    const text = await answer.text();
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
    return { status: answer.status, body: parsed };
  }

  async function ok(path, body) {
    const answer = await api(path, body);
    assert.equal(answer.status, 200, `${path} answered ${answer.status}: ${JSON.stringify(answer.body)}`);
    return answer.body;
  }

  const publish = (channel, data) => gateway.publish(channel, data, { apiKey: API_KEY });

  before(async () => {
    gateway = await Gateway.start([
      '--node-id', 'srv-sub', '--history-size', '100',
      '--jwt-secret', JWT_SECRET, '--jwt-allow-any-audience', '--jwt-allow-any-issuer',
      '--api-key', API_KEY,
    ]);
    const probe = await api('subscribe', { user: 'nobody', channel: 'probe' });
    if (probe.status === 404) skip = 'this gateway binary has no POST /api/subscribe';
  });

  test('a user is subscribed by its backend, recovers across a reconnect, then is unsubscribed', async (t) => {
    if (skip) return t.skip(skip);
    const channels = ['inbox:alice', 'ctl:alice'];
    const { gate, GatedWebSocket } = await gatedWebSocket();
    const alice = client(gateway.wsUrl, { token: mintToken('alice', 600, { channels }), WebSocket: GatedWebSocket });
    const aliceTab2 = client(gateway.wsUrl, { token: mintToken('alice', 600, { channels }) });
    const bob = client(gateway.wsUrl, { token: mintToken('bob', 600, { channels: ['inbox:*'] }) });
    const log = record(alice);
    const events = serverEvents(alice);
    const tab2Events = serverEvents(aliceTab2);
    const bobEvents = serverEvents(bob);
    let got = null;
    let tab2Got = null;
    aliceTab2.on('serverSubscribed', (sub) => (tab2Got = collect(sub)));
    const ended = [];
    alice.on('serverSubscribed', (sub) => {
      got = collect(sub); // attached before any publication of the channel arrives
      sub.on('unsubscribed', (info) => ended.push(info));
    });
    const session = await alice.connect();
    await aliceTab2.connect();
    await bob.connect();
    // A sentinel channel of alice's own, to know a publication had the time to arrive.
    const ctl = alice.subscribe('ctl:alice');
    const ctlGot = collect(ctl);
    await ctl.ready;
    let sentinels = 0;
    const sentinel = async () => {
      await publish('ctl:alice', ++sentinels);
      await ctlGot.until(sentinels);
    };

    // The API key is required.
    assert.equal((await api('subscribe', { user: 'alice', channel: 'inbox:alice' }, { key: null })).status, 401);
    assert.equal(events.subscribed.length, 0);

    // POST /api/subscribe: every connection of alice adopts the subscription.
    assert.deepEqual(await ok('subscribe', { user: 'alice', channel: 'inbox:alice' }), { nodes: ['srv-sub'] });
    await waitFor(() => events.subscribed.length === 1 && tab2Events.subscribed.length === 1, { message: 'serverSubscribed on both tabs of alice' });
    const sub = events.subscribed[0];
    assert.equal(sub.channel, 'inbox:alice');
    assert.equal(sub.server, true);
    assert.equal(sub.state, 'subscribed');
    assert.equal(alice.getSubscription('inbox:alice'), sub);
    assert.equal(tab2Events.subscribed[0].server, true);
    await sub.ready;

    for (const n of range(1, 4)) await publish('inbox:alice', { n });
    await got.until(4);
    await tab2Got.until(4);
    assert.deepEqual(got.offsets(), range(1, 4));
    assert.deepEqual(got.values(), range(1, 4).map((n) => ({ n })));
    assert.deepEqual(tab2Got.values(), range(1, 4).map((n) => ({ n })));
    assert.equal(bobEvents.subscribed.length, 0, 'another user is not subscribed');
    assert.equal(bob.getSubscription('inbox:alice'), null);
    const epoch = got.messages[0].epoch;
    assert.deepEqual(sub.position, { epoch, offset: 4 });

    // The backend makes this connection reconnect (4010); the line stays down while 5..7 are published.
    gate.open = false;
    assert.deepEqual(await ok('disconnect', { client: session.client, code: 4010 }), { nodes: ['srv-sub'] });
    const d = await log.nth('disconnected', 1);
    assert.equal(d.code, 4010);
    assert.equal(d.willReconnect, true);
    assert.equal(sub.state, 'pending');
    for (const n of range(5, 7)) await publish('inbox:alice', { n });
    await waitFor(() => log.count('connecting') >= 3, { message: 'reconnection attempts while the line is down' });
    gate.open = true;
    await log.nth('connected', 2);
    await got.until(7);
    await publish('inbox:alice', { n: 8 });
    await got.until(8);
    assert.deepEqual(got.offsets(), range(1, 8), 'every publication exactly once, in order');
    assert.deepEqual(got.values(), range(1, 8).map((n) => ({ n })));
    assert.deepEqual(got.messages.map((m) => m.replayed), range(1, 8).map((n) => n >= 5 && n <= 7));
    // (The notice's own `subscribed` event fired before serverSubscribed, so it is not in `got`.)
    assert.equal(got.subscribed.length, 1);
    assert.equal(got.subscribed[0].recovered, true, 'resubscribed with since');
    assert.equal(got.subscribed[0].server, undefined, 'by the client itself');
    assert.deepEqual(got.recovered.map((r) => [r.offset, r.replayed]), [[7, 3]]);
    assert.equal(got.recoveryFailed.length, 0);
    assert.equal(alice.getSubscription('inbox:alice'), sub, 'the same Subscription');
    assert.equal(events.subscribed.length, 1, 'serverSubscribed only for the notice');
    assert.equal(alice.session.client === session.client, false, 'a new connection');

    // POST /api/unsubscribe: gone from both tabs, no publication after it.
    assert.deepEqual(await ok('unsubscribe', { user: 'alice', channel: 'inbox:alice' }), { nodes: ['srv-sub'] });
    await waitFor(() => events.unsubscribed.length === 1 && tab2Events.unsubscribed.length === 1, { message: 'serverUnsubscribed on both tabs of alice' });
    assert.equal(events.unsubscribed[0], sub);
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(ended, [{ channel: 'inbox:alice', server: true }]);
    assert.equal(alice.getSubscription('inbox:alice'), null);
    assert.equal(aliceTab2.getSubscription('inbox:alice'), null);
    await publish('inbox:alice', { n: 9 });
    await sentinel();
    assert.equal(got.messages.length, 8);

    // And it stays gone after a reconnect (not resubscribed).
    assert.deepEqual(await ok('disconnect', { client: alice.session.client, code: 4010 }), { nodes: ['srv-sub'] });
    await log.nth('connected', 3);
    assert.deepEqual([...alice.subscriptions.keys()], ['ctl:alice']);
    await ctl.ready;
    await waitFor(() => ctl.state === 'subscribed', { message: 'ctl:alice resubscribed' });
    await publish('inbox:alice', { n: 10 });
    await sentinel();
    assert.equal(got.messages.length, 8);
    assert.deepEqual(tab2Got.values(), range(1, 8).map((n) => ({ n })), 'the other tab, connected throughout');
    assert.ok(tab2Got.messages.every((m) => !m.replayed));
    assert.equal(log.of('error').length, 0);
  });

  test('{"client": id} subscribes one connection; without the channel in its token the resubscribe is refused', async (t) => {
    if (skip) return t.skip(skip);
    const carol = client(gateway.wsUrl, { token: mintToken('carol', 600, { channels: ['room:*'] }) });
    const other = client(gateway.wsUrl, { token: mintToken('carol', 600, { channels: ['room:*'] }) });
    const log = record(carol);
    const events = serverEvents(carol);
    const otherEvents = serverEvents(other);
    const session = await carol.connect();
    await other.connect();

    // The backend is trusted: a channel the token does not grant is subscribed all the same.
    await ok('subscribe', { client: session.client, channel: 'secret:carol' });
    await waitFor(() => events.subscribed.length === 1, { message: 'serverSubscribed' });
    const sub = events.subscribed[0];
    const got = collect(sub);
    const errors = [];
    sub.on('error', (err) => errors.push(err));
    await publish('secret:carol', 'psst');
    await got.until(1);
    await sleep(100);
    assert.equal(otherEvents.subscribed.length, 0, 'only the connection named');

    // The resubscribe after a reconnect is the client's own subscribe: permissions apply.
    await ok('disconnect', { client: session.client, code: 4010 });
    await log.nth('connected', 2);
    await waitFor(() => sub.state === 'failed', { message: 'the resubscribe to be refused' });
    assert.deepEqual(errors.map((e) => [e.code, e.channel]), [['forbidden', 'secret:carol']]);
    assert.equal(carol.getSubscription('secret:carol'), null);
    assert.equal(carol.state, 'connected');
  });
});
