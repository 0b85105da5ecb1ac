// Integration tests against real gateway processes (GATEWAY_BIN): one node on its embedded
// broker, reached directly or through a TCP proxy that cuts or silences the line, a node
// with token authentication, and nodes whose `room` namespace keeps presence (--config).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { Client } from '../src/pubsub.js';
import { Gateway, JWT_SECRET, gatewayKnowsConfig, mintToken, stopAll, tempFile, waitFor } from './support/processes.js';
import { CutProxy } from './support/proxy.js';
import { collect, range, record } from './support/recorder.js';

const clients = [];
const proxies = [];
after(async () => {
  for (const c of clients) c.close();
  for (const p of proxies) await p.close();
  await stopAll();
});

/** A client with fast test timings, closed at the end. */
function client(url, options = {}) {
  const c = new Client(url, { minReconnectDelay: 50, maxReconnectDelay: 400, requestTimeout: 5000, ...options });
  clients.push(c);
  return c;
}

async function proxyTo(gateway) {
  const proxy = await CutProxy.start(gateway.port);
  proxies.push(proxy);
  return proxy;
}

describe('one node', () => {
  let gateway;

  before(async () => {
    gateway = await Gateway.start(['--node-id', 'solo', '--history-size', '100']);
  });

  test('subscribe, receive HTTP and client publications in order, publish resolves with the position', async () => {
    const c = client(gateway.wsUrl);
    const log = record(c);
    const sub = c.subscribe('basic');
    const got = collect(sub);
    const session = await c.connect();
    assert.equal(session.node, 'solo');
    assert.equal(typeof session.pingIntervalMs, 'number');
    await sub.ready;
    // Nothing published yet: no stream, the empty epoch; the first stream continues it.
    assert.deepEqual([got.subscribed[0].epoch, got.subscribed[0].offset], ['', 0]);
    const first = await gateway.publish('basic', { n: 1 });
    assert.equal(first.offset, 1);
    for (const n of range(2, 3)) assert.equal((await gateway.publish('basic', { n })).offset, n);
    const published = await c.publish('basic', { n: 4 });
    assert.deepEqual(published, { channel: 'basic', epoch: first.epoch, offset: 4 });
    await got.until(4);
    assert.deepEqual(got.offsets(), [1, 2, 3, 4]);
    assert.deepEqual(got.values(), [{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }]);
    assert.ok(got.messages.every((m) => m.epoch === published.epoch && !m.replayed));
    // Binary data round-trips as data_b64.
    const bin = collect(c.subscribe('basic-bin'));
    await c.getSubscription('basic-bin').ready;
    await c.publish('basic-bin', new Uint8Array([0, 1, 2, 254, 255]));
    await bin.until(1);
    assert.deepEqual(bin.messages[0].data, new Uint8Array([0, 1, 2, 254, 255]));
    assert.equal(bin.messages[0].binary, true);
    // Server errors carry their code; the connection stays.
    await assert.rejects(c.publish('bad name', 1), { code: 'invalid_channel' });
    const refused = c.subscribe('no spaces allowed');
    await assert.rejects(refused.ready, { code: 'invalid_channel' });
    assert.equal(refused.state, 'failed');
    assert.ok((await c.ping()) >= 0);
    assert.equal(log.count('disconnected'), 0);
    // Unsubscribed: nothing more arrives.
    await sub.unsubscribe();
    await gateway.publish('basic', { n: 5 });
    await c.publish('basic-bin', new Uint8Array([9]));
    await bin.until(2);
    assert.equal(got.messages.length, 4);
  });

  test("recovers after the client's socket is cut: every message exactly once, in order", async () => {
    const proxy = await proxyTo(gateway);
    const c = client(proxy.wsUrl);
    const log = record(c);
    const sub = c.subscribe('cut');
    const got = collect(sub);
    await c.connect();
    await sub.ready;
    for (const n of range(1, 5)) await gateway.publish('cut', { n });
    await got.until(5);
    // The line goes down and stays down while 5 more are published.
    proxy.refuse(true);
    proxy.cut();
    await log.nth('disconnected', 1);
    for (const n of range(6, 10)) await gateway.publish('cut', { n });
    await waitFor(() => log.count('connecting') >= 3, { message: 'reconnection attempts while the line is down' });
    proxy.refuse(false);
    await log.nth('connected', 2);
    await got.until(10);
    for (const n of range(11, 12)) await gateway.publish('cut', { n });
    await got.until(12);
    assert.deepEqual(got.offsets(), range(1, 12));
    assert.deepEqual(got.values(), range(1, 12).map((n) => ({ n })));
    assert.deepEqual(got.messages.map((m) => m.replayed), range(1, 12).map((n) => n >= 6 && n <= 10));
    assert.equal(got.subscribed[1].recovered, true);
    assert.deepEqual(got.recovered.map((r) => [r.offset, r.replayed]), [[10, 5]]);
    assert.equal(got.recoveryFailed.length, 0);
    const d = log.of('disconnected')[0];
    assert.equal(d.code, 1006);
    assert.equal(d.willReconnect, true);
  });

  test('a silent dead line is detected by the heartbeat within interval + timeout, then recovered', async () => {
    const proxy = await proxyTo(gateway);
    const c = client(proxy.wsUrl, { heartbeat: { interval: 400, timeout: 400 } });
    const log = record(c);
    const sub = c.subscribe('silent');
    const got = collect(sub);
    await c.connect();
    await sub.ready;
    await gateway.publish('silent', 1);
    await got.until(1);
    const silencedAt = Date.now();
    proxy.silence();
    await gateway.publish('silent', 2);
    const d = await log.nth('disconnected', 1, 5000);
    const detectedIn = log.timed('disconnected')[0].at - silencedAt;
    assert.equal(d.reason, 'heartbeat timeout');
    assert.ok(detectedIn <= 400 + 400 + 300, `detected in ${detectedIn} ms`);
    await got.until(2);
    assert.deepEqual(got.offsets(), [1, 2]);
    assert.deepEqual(got.recovered.map((r) => r.replayed), [1]);
  });

  test('a failed upgrade (503 max_connections) backs off exponentially until a slot frees', async () => {
    const small = await Gateway.start(['--node-id', 'small', '--max-connections', '1']);
    const first = client(small.wsUrl);
    await first.connect();
    const second = client(small.wsUrl, { minReconnectDelay: 40, maxReconnectDelay: 1000, random: () => 0.999 });
    const log = record(second);
    second.connect();
    await log.nth('disconnected', 4);
    const failures = log.of('disconnected').slice(0, 4);
    for (const d of failures) {
      assert.equal(d.code, 1006);
      assert.equal(d.opened, false, 'the upgrade never opened');
      assert.equal(d.willReconnect, true);
    }
    assert.deepEqual(failures.map((d) => d.attempt), [1, 2, 3, 4]);
    assert.deepEqual(failures.map((d) => d.delay), [39, 79, 159, 319]);
    first.close();
    await waitFor(() => second.state === 'connected', { message: 'the second client connects once the slot is free' });
    await small.kill();
  });

  test('recovered:false when history no longer holds the missed messages', async () => {
    const short = await Gateway.start(['--node-id', 'short', '--history-size', '3']);
    const proxy = await proxyTo(short);
    const c = client(proxy.wsUrl);
    const log = record(c);
    const sub = c.subscribe('short');
    const got = collect(sub);
    await c.connect();
    await sub.ready;
    for (const n of range(1, 2)) await short.publish('short', n);
    await got.until(2);
    const epoch = got.messages[0].epoch;
    proxy.refuse(true);
    proxy.cut();
    await log.nth('disconnected', 1);
    for (const n of range(3, 10)) await short.publish('short', n);
    proxy.refuse(false);
    await waitFor(() => got.recoveryFailed.length === 1, { message: 'recoveryFailed' });
    assert.deepEqual(got.recoveryFailed, [{ channel: 'short', since: { epoch, offset: 2 }, epoch, offset: 10 }]);
    assert.deepEqual(sub.position, { epoch, offset: 10 });
    await short.publish('short', 11);
    await got.until(3);
    assert.deepEqual(got.offsets(), [1, 2, 11], 'no partial replay, live messages after the reported position');
    assert.equal(got.recovered.length, 0);
    await short.kill();
  });
});

describe('token authentication', () => {
  let gateway;
  const claims = { channels: ['news', 'chat:*'], publish: ['chat:*'] };

  before(async () => {
    gateway = await Gateway.start(['--node-id', 'auth', '--jwt-secret', JWT_SECRET, '--jwt-leeway', '0s', '--allow-open-api', '--jwt-allow-any-audience', '--jwt-allow-any-issuer']);
  });

  test('token_expiring is answered with a fresh token from getToken: the connection outlives the first token', async () => {
    const reasons = [];
    let firstExpiry = 0;
    const c = client(gateway.wsUrl, {
      getToken: ({ reason }) => {
        reasons.push(reason);
        const token = mintToken('alice', 2, claims);
        if (!firstExpiry) firstExpiry = JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).exp * 1000;
        return token;
      },
    });
    const log = record(c);
    const sub = c.subscribe('chat:room');
    const got = collect(sub);
    const session = await c.connect();
    await sub.ready;
    await log.nth('tokenRefreshed', 2, 10000);
    await waitFor(() => Date.now() > firstExpiry + 500, { timeout: 10000, message: 'the first token to have expired' });
    await c.publish('chat:room', 'still here');
    await gateway.publish('chat:room', 'and here');
    await got.until(2);
    assert.deepEqual(got.values(), ['still here', 'and here']);
    assert.equal(log.count('disconnected'), 0);
    assert.equal(c.session.client, session.client, 'the same connection');
    assert.deepEqual(reasons.slice(0, 3), ['connect', 'refresh', 'refresh']);
    // Permissions come from the token.
    await assert.rejects(c.publish('news', 1), { code: 'forbidden' });
    await assert.rejects(c.subscribe('secret').ready, { code: 'forbidden' });
  });

  test('4001: a rejected token is replaced by getToken once, then the client connects', async () => {
    const reasons = [];
    const c = client(gateway.wsUrl, {
      getToken: ({ reason }) => {
        reasons.push(reason);
        return reasons.length === 1 ? mintToken('alice', 60, claims, 'another-secret-that-is-32-bytes-long!!') : mintToken('alice', 60, claims);
      },
    });
    const log = record(c);
    await c.connect();
    assert.deepEqual(reasons, ['connect', 'unauthorized']);
    assert.deepEqual(log.of('disconnected').map((d) => [d.code, d.willReconnect]), [[4001, true]]);
    assert.equal(c.state, 'connected');
  });

  test('4001 with a static token: one retry, then failed (no loop)', async () => {
    const c = client(gateway.wsUrl, { token: mintToken('alice', -60, claims) });
    const log = record(c);
    await assert.rejects(c.connect(), { code: 'unauthorized' });
    assert.equal(c.state, 'failed');
    assert.equal(log.count('connecting'), 2);
    assert.deepEqual(log.of('disconnected').map((d) => [d.code, d.willReconnect]), [
      [4001, true],
      [4001, false],
    ]);
    assert.deepEqual(log.of('error').map((e) => e.code), ['unauthorized']);
  });

  test('getToken failing after a 4001 stops the client and reports it', async () => {
    let calls = 0;
    const c = client(gateway.wsUrl, {
      getToken: async () => {
        if (++calls === 1) return 'not-a-jwt';
        throw new Error('login expired');
      },
    });
    const log = record(c);
    await assert.rejects(c.connect(), { code: 'token_failed' });
    assert.equal(c.state, 'failed');
    assert.equal(log.count('connecting'), 2);
    assert.match(log.of('error')[0].message, /login expired/);
  });

  test('4003 (refresh as another user): failed, never reconnects', async () => {
    const c = client(gateway.wsUrl, {
      getToken: ({ reason }) => mintToken(reason === 'refresh' ? 'mallory' : 'alice', 2, claims),
    });
    const log = record(c);
    await c.connect();
    await waitFor(() => c.state === 'failed', { timeout: 10000, message: 'the client to fail on 4003' });
    assert.deepEqual(log.of('disconnected').map((d) => [d.code, d.willReconnect]), [[4003, false]]);
    assert.ok(log.of('error').some((e) => e.code === 'forbidden'));
    assert.equal(log.count('connecting'), 1);
  });
});

describe('presence', () => {
  const config = tempFile('presence.toml', '[namespaces.room]\npresence = true\njoin_leave = true\n');
  const skip = !gatewayKnowsConfig(config) && 'this gateway binary has no presence/join_leave namespace settings yet';

  /** Records a subscription's join and leave events; `of(kind, client)` those of one connection. */
  function presenceLog(sub) {
    const events = [];
    sub.on('join', (member, info) => events.push({ kind: 'join', member, ...info }));
    sub.on('leave', (member, info) => events.push({ kind: 'leave', member, ...info }));
    const of = (kind, clientId) => events.filter((e) => e.kind === kind && e.member.client === clientId);
    return {
      of,
      /** Waits for the `n`th `kind` event of connection `clientId` and returns it. */
      nth: (kind, clientId, n = 1) => waitFor(() => of(kind, clientId)[n - 1], { message: `${kind} #${n} of ${clientId}` }),
    };
  }

  const clientsOf = (members) => members.map((m) => m.client).sort();

  test('two clients see each other in presence(), stats count both, join and leave reach the other', { skip }, async () => {
    const gateway = await Gateway.start(['--node-id', 'presence', '--config', config]);
    const b = client(gateway.wsUrl);
    const subB = b.subscribe('room:1');
    const log = presenceLog(subB);
    const sessionB = await b.connect();
    await subB.ready;

    const a = client(gateway.wsUrl);
    const subA = a.subscribe('room:1');
    const sessionA = await a.connect();
    await subA.ready;
    const joined = await log.nth('join', sessionA.client);
    assert.deepEqual(joined.member, { client: sessionA.client, user: '' }, 'anonymous: user "" and no info');
    assert.equal(typeof joined.first, 'boolean');

    for (const sub of [subA, subB]) {
      const members = await sub.presence();
      assert.deepEqual(clientsOf(members), clientsOf([sessionA, sessionB]));
      assert.ok(members.every((m) => m.user === '' && !('info' in m)));
      assert.equal((await sub.presenceStats()).clients, 2);
    }

    // A unsubscribes: B sees it leave; A subscribes again: it joins again; A disconnects: it leaves.
    await subA.unsubscribe();
    assert.equal(typeof (await log.nth('leave', sessionA.client)).last, 'boolean');
    assert.deepEqual(clientsOf(await subB.presence()), [sessionB.client]);
    assert.equal((await subB.presenceStats()).clients, 1);
    await a.subscribe('room:1').ready;
    await log.nth('join', sessionA.client, 2);
    assert.equal((await subB.presenceStats()).clients, 2);
    a.close();
    await log.nth('leave', sessionA.client, 2);
    assert.deepEqual(clientsOf(await subB.presence()), [sessionB.client]);

    // Outside the namespace there is no presence; the subscription itself is fine.
    const news = b.subscribe('news');
    await news.ready;
    await assert.rejects(news.presence(), { code: 'not_available' });
    await assert.rejects(news.presenceStats(), { code: 'not_available' });
    assert.equal(news.state, 'subscribed');
    assert.equal(b.state, 'connected');
    await gateway.kill();
  });

  test('with tokens: members carry the user and the info claim; first/last count users, not tabs', { skip }, async () => {
    const gateway = await Gateway.start(['--node-id', 'presence-auth', '--config', config, '--jwt-secret', JWT_SECRET, '--allow-open-api', '--jwt-allow-any-audience', '--jwt-allow-any-issuer']);
    const channels = ['room:*', 'news'];
    const connectAs = async (user, info) => {
      const c = client(gateway.wsUrl, { token: mintToken(user, 600, { channels, ...(info ? { info } : {}) }) });
      const sub = c.subscribe('room:1');
      const session = await c.connect();
      await sub.ready;
      return { c, sub, session };
    };
    const bob = await connectAs('bob');
    const log = presenceLog(bob.sub);
    const ann1 = await connectAs('ann', { name: 'Ann' });
    const ann2 = await connectAs('ann', { name: 'Ann' });
    const first = await log.nth('join', ann1.session.client);
    assert.deepEqual(first, { kind: 'join', member: { client: ann1.session.client, user: 'ann', info: { name: 'Ann' } }, first: true });
    assert.equal((await log.nth('join', ann2.session.client)).first, false, "ann's second tab");

    const members = await bob.sub.presence();
    assert.deepEqual(
      members.map((m) => [m.client, m.user, m.info]).sort(),
      [
        [ann1.session.client, 'ann', { name: 'Ann' }],
        [ann2.session.client, 'ann', { name: 'Ann' }],
        [bob.session.client, 'bob', undefined],
      ].sort(),
    );
    assert.deepEqual(await ann1.sub.presenceStats(), { clients: 3, users: 2 });

    ann2.c.close();
    assert.equal((await log.nth('leave', ann2.session.client)).last, false, 'ann is still there in another tab');
    await ann1.sub.unsubscribe();
    const left = await log.nth('leave', ann1.session.client);
    assert.equal(left.last, true, 'ann left');
    assert.equal(left.member.user, 'ann');
    assert.deepEqual(await bob.sub.presenceStats(), { clients: 1, users: 1 });

    const news = bob.c.subscribe('news');
    await news.ready;
    await assert.rejects(news.presence(), { code: 'not_available' });
    await gateway.kill();
  });
});
