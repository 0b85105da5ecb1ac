// Unit tests: backoff, reconnect rules per close code, the state machine, recovery
// bookkeeping, requests, heartbeat and token refresh (presence: presence.test.js), on a fake WebSocket and a fake
// clock.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { Client, PubSubError, backoffDelay, parseReconnectHint, PROTOCOL } from '../src/pubsub.js';
import { setup, flush, connected, EPOCH } from './support/fakes.js';


/** A message frame for `channel` at `offset`. */
const message = (channel, offset, data = offset, epoch = EPOCH) => ({ type: 'message', channel, data, offset, epoch });

describe('backoff', () => {
  test('full jitter: random in [0, min(max, min * 2^attempt))', () => {
    const caps = [0, 1, 2, 3, 4, 5, 6].map((attempt) => backoffDelay(attempt, { min: 100, max: 1000, random: () => 0.999999 }));
    assert.deepEqual(caps, [99, 199, 399, 799, 999, 999, 999]);
    assert.equal(backoffDelay(3, { min: 100, max: 1000, random: () => 0 }), 0);
    assert.equal(backoffDelay(2, { min: 100, max: 1000, random: () => 0.5 }), 200);
    assert.equal(backoffDelay(2000, { min: 100, max: 1000, random: () => 0.5 }), 500, 'huge attempts stay capped');
  });

  test('reconnect hints are parsed from JSON close reasons only', () => {
    assert.equal(parseReconnectHint('{"reason":"draining","reconnect_after_ms":1234}'), 1234);
    assert.equal(parseReconnectHint('{"reconnect_after_ms":0}'), 0);
    assert.equal(parseReconnectHint('draining'), null);
    assert.equal(parseReconnectHint(''), null);
    assert.equal(parseReconnectHint(undefined), null);
    assert.equal(parseReconnectHint('{"reconnect_after_ms":-5}'), null);
    assert.equal(parseReconnectHint('{"reconnect_after_ms":"5"}'), null);
    assert.equal(parseReconnectHint('{not json'), null);
    assert.equal(parseReconnectHint('{"reason":"draining"}'), null);
  });

  test('failed upgrades back off exponentially; no socket before the delay is over', () => {
    const { client, clock, sockets, of } = setup({ random: () => 0.999999 });
    client.connect();
    const expected = [99, 199, 399, 799, 999, 999];
    for (const [i, delay] of expected.entries()) {
      assert.equal(sockets.length, i + 1);
      sockets[i].fail();
      const disconnected = of('disconnected').at(-1);
      assert.equal(disconnected.code, 1006);
      assert.equal(disconnected.opened, false);
      assert.equal(disconnected.willReconnect, true);
      assert.equal(disconnected.delay, delay);
      assert.equal(client.state, 'disconnected');
      clock.advance(delay - 1);
      assert.equal(sockets.length, i + 1, `attempt ${i + 1} waits its full delay`);
      clock.advance(1);
      assert.equal(sockets.length, i + 2);
      assert.equal(client.state, 'connecting');
    }
    assert.deepEqual(of('connecting').map((c) => c.attempt), [0, 1, 2, 3, 4, 5, 6]);
  });

  test('an error event without a close event (Node 20 on a failed handshake) counts as close 1006', () => {
    const { client, clock, sockets, socket, of } = setup();
    client.connect();
    socket().onerror({});
    assert.equal(client.state, 'connecting');
    clock.advance(0);
    assert.equal(client.state, 'disconnected');
    assert.equal(of('disconnected').at(-1).code, 1006);
    clock.advance(50);
    assert.equal(sockets.length, 2);
    // With the close event following the error, it is handled once.
    socket().fail();
    clock.advance(0);
    assert.equal(of('disconnected').length, 2);
  });

  test('attempts reset after the connection stayed up for stableAfter, not before', () => {
    const { client, clock, sockets, socket, of } = setup({ random: () => 0.999999, stableAfter: 5000, heartbeat: false });
    client.connect();
    sockets[0].fail();
    clock.advance(99);
    sockets[1].fail();
    clock.advance(199);
    assert.equal(of('disconnected').at(-1).delay, 199);
    // Up, but only briefly: the next delay keeps growing.
    socket().accept();
    clock.advance(4999);
    socket().serverClose(1011);
    assert.equal(of('disconnected').at(-1).delay, 399);
    clock.advance(399);
    // Up long enough: back to the first delay.
    socket().accept();
    clock.advance(5000);
    socket().serverClose(1011);
    assert.equal(of('disconnected').at(-1).delay, 99);
  });

  test('gives up after maxReconnectAttempts consecutive failures', () => {
    const { client, clock, sockets, of } = setup({ maxReconnectAttempts: 2 });
    client.connect();
    sockets[0].fail();
    clock.advance(1000);
    sockets[1].fail();
    clock.advance(1000);
    sockets[2].fail();
    assert.equal(client.state, 'failed');
    assert.equal(of('error').at(-1).code, 'reconnect_failed');
    clock.advance(60000);
    assert.equal(sockets.length, 3);
  });
});

describe('close codes', () => {
  test('1012 with a reconnect hint waits the hint plus jitter, and does not grow the backoff', () => {
    const { client, clock, sockets, socket, of, rng } = connected();
    rng.value = 0.25;
    socket().serverClose(1012, '{"reason":"draining","reconnect_after_ms":3000}');
    const d = of('disconnected').at(-1);
    assert.equal(d.code, 1012);
    assert.equal(d.hint, 3000);
    assert.equal(d.delay, 3000 + 0.25 * 200);
    clock.advance(3049);
    assert.equal(sockets.length, 1, 'not before the hint');
    clock.advance(1);
    assert.equal(sockets.length, 2);
    socket().fail();
    assert.equal(of('disconnected').at(-1).delay, 25, 'the backoff starts at attempt 0 after a hint');
    assert.equal(client.state, 'disconnected');
  });

  test('1012 without a hint, 1013, 4008, 4029, 1001, 1006, 1011 and 1000 back off and reconnect', () => {
    for (const code of [1012, 1013, 4008, 4029, 1001, 1006, 1011, 1000]) {
      const { client, clock, sockets, socket, of } = connected();
      socket().serverClose(code, 'bye');
      const d = of('disconnected').at(-1);
      assert.equal(d.code, code);
      assert.equal(d.willReconnect, true, `${code} reconnects`);
      assert.equal(d.delay, 50, `${code}: backoff attempt 0`);
      clock.advance(50);
      assert.equal(sockets.length, 2, `${code} reconnected`);
      assert.equal(client.state, 'connecting');
    }
  });

  test('1013 with a hint honours the hint', () => {
    const { clock, sockets, socket, of } = connected();
    socket().serverClose(1013, '{"reconnect_after_ms":700}');
    assert.equal(of('disconnected').at(-1).delay, 800);
    clock.advance(799);
    assert.equal(sockets.length, 1);
    clock.advance(1);
    assert.equal(sockets.length, 2);
  });

  test('4003, 1008 and 4011 (logged out) stop the client: failed, error, no reconnect', () => {
    for (const [code, errorCode] of [
      [4003, 'forbidden'],
      [1008, 'policy_violation'],
      [4011, 'logged_out'],
    ]) {
      const { client, clock, sockets, socket, of } = connected();
      socket().serverClose(code);
      assert.equal(of('disconnected').at(-1).willReconnect, false);
      assert.equal(client.state, 'failed');
      assert.equal(of('error').at(-1).code, errorCode);
      clock.advance(120000);
      assert.equal(sockets.length, 1);
    }
  });

  test('4010 (disconnected by a backend) reconnects with the usual backoff', () => {
    const { client, clock, sockets, socket, of } = connected();
    socket().serverClose(4010);
    assert.equal(of('disconnected').at(-1).willReconnect, true);
    assert.notEqual(client.state, 'failed');
    clock.advance(120000);
    assert.ok(sockets.length >= 2, 'reconnected');
  });

  test('4001 asks getToken for a fresh token and reconnects with it; a second 4001 gives up', async () => {
    const reasons = [];
    let n = 0;
    const { client, clock, sockets, socket, of } = setup({
      getToken: async ({ reason }) => {
        reasons.push(reason);
        return `token-${++n}`;
      },
    });
    client.connect();
    await flush();
    assert.equal(socket().accept().token, 'token-1');
    socket().serverClose(4001);
    assert.equal(of('disconnected').at(-1).delay, 0);
    clock.advance(0);
    await flush();
    assert.deepEqual(reasons, ['connect', 'unauthorized']);
    assert.equal(sockets.length, 2);
    socket().open();
    const connect = socket().last('connect');
    assert.equal(connect.token, 'token-2');
    // The fresh token is refused too: stop instead of looping.
    socket().receive({ type: 'error', id: connect.id, code: 'unauthorized', message: 'bad token' });
    socket().serverClose(4001);
    assert.equal(client.state, 'failed');
    assert.equal(of('error').at(-1).code, 'unauthorized');
    clock.advance(120000);
    await flush();
    assert.equal(sockets.length, 2);
    assert.deepEqual(reasons, ['connect', 'unauthorized']);
  });

  test('4001 after a successful session (token expired) renews again', async () => {
    let n = 0;
    const { client, clock, sockets, socket } = setup({ getToken: async () => `token-${++n}` });
    client.connect();
    await flush();
    socket().accept();
    for (let round = 2; round <= 4; round++) {
      socket().serverClose(4001);
      clock.advance(0);
      await flush();
      assert.equal(socket().accept().token, `token-${round}`);
      assert.equal(client.state, 'connected');
    }
    assert.equal(sockets.length, 4);
  });

  test('a static token gets one retry on 4001, then the client gives up', () => {
    const { client, clock, sockets, socket, of } = setup({ token: 'static' });
    client.connect();
    assert.equal(socket().accept().token, 'static');
    socket().serverClose(4001);
    clock.advance(0);
    assert.equal(sockets.length, 2);
    socket().open();
    assert.equal(socket().last('connect').token, 'static');
    socket().serverClose(4001);
    assert.equal(client.state, 'failed');
    assert.equal(of('error').at(-1).code, 'unauthorized');
    clock.advance(120000);
    assert.equal(sockets.length, 2);
  });

  test('getToken failing stops the client with token_failed', async () => {
    let calls = 0;
    const { client, clock, sockets, socket, of } = setup({
      getToken: async () => {
        if (++calls > 1) throw new Error('auth service down');
        return 'first';
      },
    });
    client.connect();
    await flush();
    socket().accept();
    socket().serverClose(4001);
    clock.advance(0);
    await flush();
    assert.equal(client.state, 'failed');
    const err = of('error').at(-1);
    assert.equal(err.code, 'token_failed');
    assert.match(err.message, /auth service down/);
    assert.equal(sockets.length, 1);
  });
});

describe('state machine', () => {
  test('idle → connecting → connected → disconnected → connecting → connected → closed', async () => {
    const { client, clock, socket, of } = setup();
    assert.equal(client.state, 'idle');
    const ready = client.connect();
    assert.equal(client.state, 'connecting');
    assert.deepEqual(socket().protocols, [PROTOCOL]);
    const connect = socket().accept({ node: 'gw-7', pingIntervalMs: 25000 });
    assert.deepEqual(connect, { type: 'connect', id: connect.id });
    assert.deepEqual(await ready, { client: 'gw-7-1', node: 'gw-7', pingIntervalMs: 25000 });
    assert.deepEqual(client.session, { client: 'gw-7-1', node: 'gw-7', pingIntervalMs: 25000 });
    socket().serverClose(1011);
    assert.equal(client.session, null);
    clock.advance(50);
    socket().accept({ node: 'gw-8' });
    client.close();
    assert.deepEqual(
      of('state').map((s) => s.state),
      ['connecting', 'connected', 'disconnected', 'connecting', 'connected', 'closed'],
    );
    assert.deepEqual(of('disconnected').map((d) => [d.code, d.willReconnect]), [
      [1011, true],
      [1000, false],
    ]);
    assert.deepEqual(socket().closedByClient, { code: 1000, reason: 'client closed' });
    clock.advance(120000);
    assert.equal(client.state, 'closed');
  });

  test('connect() resolves on connected and rejects when the client fails; close() rejects it too', async () => {
    const a = setup();
    const first = a.client.connect();
    a.socket().serverClose(4003);
    await assert.rejects(first, { code: 'forbidden' });
    const b = setup();
    const second = b.client.connect();
    b.client.close();
    await assert.rejects(second, { code: 'client_closed' });
    assert.equal(b.client.state, 'closed');
  });

  test('a connection that is not `connected` within connectTimeout is dropped and retried', () => {
    const { client, clock, sockets, socket, of } = setup({ connectTimeout: 3000 });
    client.connect();
    socket().open(); // the upgrade worked but the server never answers connect
    clock.advance(2999);
    assert.equal(client.state, 'connecting');
    clock.advance(1);
    assert.equal(of('disconnected').at(-1).reason, 'connect timeout');
    assert.equal(of('disconnected').at(-1).local, true);
    assert.equal(sockets[0].closedByClient.code, 4000);
    clock.advance(50);
    assert.equal(sockets.length, 2);
  });

  test('close() then connect() resumes the subscriptions with since', () => {
    const { client, clock, socket } = connected();
    const got = [];
    client.subscribe('news', { onMessage: (d) => got.push(d) });
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 4 }));
    socket().receive(message('news', 5));
    client.close();
    clock.advance(10000);
    client.connect();
    socket().accept();
    assert.deepEqual(socket().last('subscribe').since, { epoch: EPOCH, offset: 5 });
    assert.equal(client.state, 'connected');
  });

  test('listeners that throw do not break the client; the error is reported', () => {
    const { client, socket, of } = connected();
    const got = [];
    client.subscribe('news', {
      onMessage: (d) => {
        got.push(d);
        throw new Error('app bug');
      },
    });
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0 }));
    socket().receive(message('news', 1));
    socket().receive(message('news', 2));
    assert.deepEqual(got, [1, 2]);
    assert.equal(of('error').length, 2);
    assert.equal(of('error')[0].code, 'listener_error');
    assert.equal(client.state, 'connected');
  });

  test('options are checked', () => {
    assert.throws(() => new Client('ws://x/ws', { protocol: 'protobuf', WebSocket: class {} }), { code: 'unsupported_protocol' });
    assert.throws(() => new Client('ws://x/ws', { WebSocket: null, environment: false, ...{ WebSocket: 'nope' } }), { code: 'no_websocket' });
    assert.throws(() => new Client(''), TypeError);
  });
});

describe('recovery bookkeeping', () => {
  test('resubscribes with since, delivers the replay once and in order, drops duplicates', () => {
    const { client, clock, socket } = connected();
    const got = [];
    const recovered = [];
    const sub = client.subscribe('news', { onMessage: (data, meta) => got.push([data, meta.offset, meta.replayed]), onRecovered: (r) => recovered.push(r) });
    assert.equal(sub.state, 'subscribing');
    assert.equal(socket().last('subscribe').since, undefined);
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 41 }));
    assert.equal(sub.state, 'subscribed');
    assert.deepEqual(sub.position, { epoch: EPOCH, offset: 41 });
    socket().receive(message('news', 42));
    socket().receive(message('news', 43));
    socket().serverClose(1006);
    assert.equal(sub.state, 'pending');
    clock.advance(50);
    socket().accept();
    const resubscribe = socket().last('subscribe');
    assert.deepEqual(resubscribe.since, { epoch: EPOCH, offset: 43 });
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 46, recovered: true }));
    assert.equal(sub.recovering, true);
    // The replay, with a duplicate of what we already have.
    for (const offset of [43, 44, 44, 45]) socket().receive(message('news', offset));
    assert.equal(recovered.length, 0, 'not recovered before the replay reached the reply position');
    socket().receive(message('news', 46));
    assert.deepEqual(recovered, [{ channel: 'news', epoch: EPOCH, offset: 46, replayed: 3 }]);
    socket().receive(message('news', 47));
    socket().receive(message('news', 46));
    assert.deepEqual(got, [
      [42, 42, false],
      [43, 43, false],
      [44, 44, true],
      [45, 45, true],
      [46, 46, true],
      [47, 47, false],
    ]);
    assert.deepEqual(sub.position, { epoch: EPOCH, offset: 47 });
  });

  test('recovered:true with nothing missed reports recovered at once', () => {
    const { client, clock, socket } = connected();
    const recovered = [];
    client.subscribe('news', { onRecovered: (r) => recovered.push(r) });
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 9 }));
    socket().serverClose(1006);
    clock.advance(50);
    socket().accept();
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 9, recovered: true }));
    assert.deepEqual(recovered, [{ channel: 'news', epoch: EPOCH, offset: 9, replayed: 0 }]);
  });

  test('recovered:false surfaces onRecoveryFailed and adopts the reply position', () => {
    const { client, clock, socket } = connected();
    const got = [];
    const failed = [];
    const sub = client.subscribe('news', { onMessage: (d) => got.push(d), onRecoveryFailed: (f) => failed.push(f) });
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 3 }));
    socket().receive(message('news', 4));
    socket().serverClose(1006);
    clock.advance(50);
    socket().accept();
    socket().answerSubscribes(() => ({ epoch: 'NewEpoch0001', offset: 2, recovered: false }));
    assert.deepEqual(failed, [{ channel: 'news', since: { epoch: EPOCH, offset: 4 }, epoch: 'NewEpoch0001', offset: 2 }]);
    assert.deepEqual(sub.position, { epoch: 'NewEpoch0001', offset: 2 });
    socket().receive(message('news', 3, 'live', 'NewEpoch0001'));
    assert.deepEqual(got, [4, 'live']);
    socket().serverClose(1006);
    clock.advance(1000);
    socket().accept();
    assert.deepEqual(socket().last('subscribe').since, { epoch: 'NewEpoch0001', offset: 3 });
  });

  test('gap notices reach onGap and move the position', () => {
    const { client, clock, socket } = connected();
    const gaps = [];
    const got = [];
    const sub = client.subscribe('news', { onGap: (g) => gaps.push(g), onMessage: (d, m) => got.push(`${m.epoch}/${m.offset}`) });
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0 }));
    socket().receive(message('news', 1));
    socket().receive({ type: 'gap', channel: 'news', epoch: 'Qm7p0Zt4Xc2b', offset: 0 });
    assert.deepEqual(gaps, [{ channel: 'news', epoch: 'Qm7p0Zt4Xc2b', offset: 0 }]);
    assert.deepEqual(sub.position, { epoch: 'Qm7p0Zt4Xc2b', offset: 0 });
    socket().receive(message('news', 1, 'x', 'Qm7p0Zt4Xc2b'));
    assert.deepEqual(got, [`${EPOCH}/1`, 'Qm7p0Zt4Xc2b/1']);
    socket().serverClose(1006);
    clock.advance(50);
    socket().accept();
    assert.deepEqual(socket().last('subscribe').since, { epoch: 'Qm7p0Zt4Xc2b', offset: 1 });
  });

  test('messages before the subscribed reply and after unsubscribe are not delivered', async () => {
    const { client, clock, socket } = connected();
    const got = [];
    const sub = client.subscribe('news', { onMessage: (d) => got.push(d) });
    socket().receive(message('news', 1)); // belongs to nobody: no reply yet
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 1 }));
    socket().receive(message('news', 2));
    const done = sub.unsubscribe();
    const unsub = socket().last('unsubscribe');
    assert.equal(unsub.channel, 'news');
    socket().receive(message('news', 3));
    socket().receive({ type: 'unsubscribed', id: unsub.id, channel: 'news' });
    await done;
    assert.deepEqual(got, [2]);
    assert.equal(sub.state, 'unsubscribed');
    assert.equal(client.getSubscription('news'), null);
    // Not resubscribed after a reconnect, and the channel can be subscribed again.
    socket().serverClose(1006);
    clock.advance(50);
    socket().accept();
    assert.equal(socket().sentOf('subscribe').length, 0);
    const again = client.subscribe('news');
    assert.notEqual(again, sub);
    assert.equal(socket().sentOf('subscribe').length, 1);
  });

  test('subscribing twice to a channel throws; a subscription made offline is sent once connected', () => {
    const { client, socket } = setup();
    const sub = client.subscribe('news', { since: { epoch: EPOCH, offset: 7 } });
    assert.throws(() => client.subscribe('news'), { code: 'already_subscribed' });
    client.connect();
    assert.equal(sub.state, 'pending');
    socket().accept();
    assert.deepEqual(socket().last('subscribe').since, { epoch: EPOCH, offset: 7 });
  });

  test('a refused subscription fails (ready rejects, onError); unavailable is retried with backoff', async () => {
    const { client, clock, socket, of } = connected();
    const errors = [];
    const sub = client.subscribe('secret', { onError: (e) => errors.push(e.code) });
    const frame = socket().last('subscribe');
    socket().receive({ type: 'error', id: frame.id, code: 'forbidden', message: 'no' });
    await assert.rejects(sub.ready, { code: 'forbidden', channel: 'secret' });
    assert.equal(sub.state, 'failed');
    assert.deepEqual(errors, ['forbidden']);
    assert.equal(client.getSubscription('secret'), null);

    const flaky = client.subscribe('news');
    socket().receive({ type: 'error', id: socket().last('subscribe').id, code: 'unavailable', message: 'redis down' });
    assert.equal(flaky.state, 'pending');
    assert.equal(of('error').at(-1).code, 'unavailable', 'without onError the client reports it');
    assert.equal(socket().sentOf('subscribe').length, 2);
    clock.advance(50);
    assert.equal(socket().sentOf('subscribe').length, 3);
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0 }));
    await flaky.ready;
    assert.equal(flaky.state, 'subscribed');
  });

  test('binary data: data_b64 arrives as Uint8Array, Uint8Array is published as data_b64', async () => {
    const { client, socket } = connected();
    const got = [];
    client.subscribe('bin', { onMessage: (d, m) => got.push([d, m.binary]) });
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0 }));
    socket().receive({ type: 'message', channel: 'bin', data_b64: 'AAH/', offset: 1, epoch: EPOCH });
    assert.deepEqual(got, [[new Uint8Array([0, 1, 255]), true]]);
    const published = client.publish('bin', new Uint8Array([0, 1, 255]));
    const frame = socket().last('publish');
    assert.equal(frame.data_b64, 'AAH/');
    assert.equal('data' in frame, false);
    socket().receive({ type: 'published', id: frame.id, channel: 'bin', epoch: EPOCH, offset: 2 });
    assert.deepEqual(await published, { channel: 'bin', epoch: EPOCH, offset: 2 });
  });
});

describe('requests', () => {
  test('publish waits for the connection, goes after the resubscribes, matches replies by id', async () => {
    const { client, socket } = setup();
    client.subscribe('news');
    const a = client.publish('news', { n: 1 });
    const b = client.publish('news', { n: 2 });
    client.connect();
    socket().accept();
    assert.deepEqual(
      socket().sent.map((m) => m.type),
      ['connect', 'subscribe', 'publish', 'publish'],
    );
    const [pa, pb] = socket().sentOf('publish');
    assert.deepEqual(pa.data, { n: 1 });
    assert.ok(pb.id > pa.id && pa.id > socket().last('subscribe').id, 'ids increase');
    // Replies out of order: matched by id.
    socket().receive({ type: 'published', id: pb.id, channel: 'news', epoch: EPOCH, offset: 2 });
    socket().receive({ type: 'published', id: pa.id, channel: 'news', epoch: EPOCH, offset: 1 });
    assert.deepEqual(await a, { channel: 'news', epoch: EPOCH, offset: 1 });
    assert.deepEqual(await b, { channel: 'news', epoch: EPOCH, offset: 2 });
  });

  test('an error reply rejects with the server code', async () => {
    const { client, socket } = connected();
    const p = client.publish('bad name', 1);
    socket().receive({ type: 'error', id: socket().last('publish').id, code: 'invalid_channel', message: "channel name contains ' '" });
    const err = await p.catch((e) => e);
    assert.ok(err instanceof PubSubError);
    assert.equal(err.code, 'invalid_channel');
    assert.match(err.message, /contains/);
  });

  test('an in-flight publish is rejected on disconnect and not sent again', async () => {
    const { client, clock, socket } = connected();
    const p = client.publish('news', 'x');
    socket().serverClose(1006);
    await assert.rejects(p, { code: 'disconnected' });
    clock.advance(50);
    socket().accept();
    assert.equal(socket().sentOf('publish').length, 0);
  });

  test('requests time out from the call, queued or sent', async () => {
    const { client, clock, socket } = setup({ requestTimeout: 2000 });
    const queued = client.publish('news', 1);
    clock.advance(2000);
    await assert.rejects(queued, { code: 'timeout' });
    client.connect();
    socket().accept();
    assert.equal(socket().sentOf('publish').length, 0, 'a timed-out command is not sent later');
    const sent = client.publish('news', 2, { timeout: 300 });
    clock.advance(300);
    await assert.rejects(sent, { code: 'timeout' });
    // A late answer is ignored.
    socket().receive({ type: 'published', id: socket().last('publish').id, channel: 'news', epoch: EPOCH, offset: 1 });
    assert.equal(client.state, 'connected');
  });

  test('the queue is bounded', async () => {
    const { client } = setup({ maxQueue: 2 });
    const kept = [client.publish('a', 1), client.publish('a', 2)];
    await assert.rejects(client.publish('a', 3), { code: 'queue_full' });
    client.close();
    for (const p of kept) await assert.rejects(p, { code: 'client_closed' });
  });

  test('close() rejects queued and in-flight commands; later sends reject without throwing', async () => {
    const { client, socket } = connected();
    const inflight = client.publish('news', 1);
    client.close();
    await assert.rejects(inflight, { code: 'client_closed' });
    await assert.rejects(client.publish('news', 2), { code: 'client_closed' });
    await assert.rejects(client.ping(), { code: 'client_closed' });
    assert.equal(socket().sentOf('publish').length, 1);
  });

  test('a socket whose send throws never makes the client throw', async () => {
    const { client, socket } = connected();
    socket().sendThrows = true;
    const p = client.publish('news', 1);
    socket().serverClose(1006);
    await assert.rejects(p, { code: 'disconnected' });
  });

  test('data that is not JSON is refused up front', async () => {
    const { client } = connected();
    await assert.rejects(client.publish('news', undefined), { code: 'bad_request' });
    const circular = {};
    circular.self = circular;
    await assert.rejects(client.publish('news', circular), { code: 'bad_request' });
    await assert.rejects(client.publish('news', 10n), { code: 'bad_request' });
  });
});

describe('heartbeat and environment', () => {
  test('pings after `interval` of silence; a pong keeps the connection', () => {
    const { client, clock, socket } = connected({ heartbeat: { interval: 1000, timeout: 500 } });
    clock.advance(999);
    assert.equal(socket().sentOf('ping').length, 0);
    clock.advance(1);
    const ping = socket().last('ping');
    assert.ok(ping);
    clock.advance(400);
    socket().receive({ type: 'pong', id: ping.id });
    clock.advance(999);
    assert.equal(socket().sentOf('ping').length, 1);
    clock.advance(1);
    assert.equal(socket().sentOf('ping').length, 2);
    assert.equal(client.state, 'connected');
  });

  test('traffic counts as liveness: no ping while messages arrive', () => {
    const { client, clock, socket } = connected();
    client.subscribe('news');
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0 }));
    for (let i = 1; i <= 20; i++) {
      clock.advance(600);
      socket().receive(message('news', i));
    }
    assert.equal(socket().sentOf('ping').length, 0);
  });

  test('no answer within `timeout` after the ping: the connection is declared dead and replaced', () => {
    const { client, clock, sockets, socket, of } = connected({ heartbeat: { interval: 1000, timeout: 500 } });
    clock.advance(1000);
    assert.equal(socket().sentOf('ping').length, 1);
    clock.advance(499);
    assert.equal(client.state, 'connected');
    clock.advance(1);
    assert.equal(client.state, 'disconnected');
    const d = of('disconnected').at(-1);
    assert.equal(d.reason, 'heartbeat timeout');
    assert.equal(d.local, true);
    assert.equal(sockets[0].closedByClient.code, 4000);
    clock.advance(50);
    assert.equal(sockets.length, 2);
  });

  test('heartbeat: false sends no pings', () => {
    const { clock, socket } = connected({ heartbeat: false });
    clock.advance(60000);
    assert.equal(socket().sentOf('ping').length, 0);
  });

  test('becoming visible pings at once', () => {
    const { clock, socket, env } = connected({ heartbeat: { interval: 10000, timeout: 500 } });
    clock.advance(100);
    env.becomeVisible();
    assert.equal(socket().sentOf('ping').length, 1);
    env.becomeVisible();
    assert.equal(socket().sentOf('ping').length, 1, 'one probe at a time');
    clock.advance(500);
    assert.equal(socket().closedByClient?.code, 4000, 'no pong: dead');
  });

  test('offline pauses reconnecting; online reconnects at once', () => {
    const { client, clock, sockets, socket, env, of } = connected({ random: () => 0.999999 });
    socket().serverClose(1006);
    env.goOffline();
    clock.advance(600000);
    assert.equal(sockets.length, 1, 'no attempts while offline');
    assert.equal(client.state, 'disconnected');
    env.goOnline();
    clock.advance(0);
    assert.equal(sockets.length, 2);
    // Going offline during a backoff wait cancels it, without burning attempts.
    socket().fail();
    assert.equal(of('disconnected').at(-1).delay, 199);
    env.goOffline();
    clock.advance(10000);
    assert.equal(sockets.length, 2);
    env.goOnline();
    clock.advance(0);
    assert.equal(sockets.length, 3);
    sockets[2].fail();
    assert.equal(of('disconnected').at(-1).delay, 399);
  });

  test('a drop that happens while offline waits for online', () => {
    const { client, clock, sockets, socket, env, of } = connected();
    env.online = false;
    socket().serverClose(1006);
    assert.equal(of('disconnected').at(-1).delay, null);
    clock.advance(600000);
    assert.equal(sockets.length, 1);
    env.goOnline();
    clock.advance(0);
    assert.equal(sockets.length, 2);
    assert.equal(client.state, 'connecting');
  });

  test('online does not cut short a server reconnect hint', () => {
    const { clock, sockets, socket, env } = connected({ hintJitter: 0 });
    socket().serverClose(1012, '{"reconnect_after_ms":5000}');
    clock.advance(1000);
    env.goOffline();
    env.goOnline();
    clock.advance(3999);
    assert.equal(sockets.length, 1);
    clock.advance(1);
    assert.equal(sockets.length, 2);
  });

  test('offline while connected checks liveness with a ping', () => {
    const { socket, env } = connected({ heartbeat: { interval: 10000, timeout: 500 } });
    env.goOffline();
    assert.equal(socket().sentOf('ping').length, 1);
  });

  test('connect() while offline waits for online', () => {
    const { client, clock, sockets, env } = setup();
    env.online = false;
    client.connect();
    assert.equal(client.state, 'disconnected');
    clock.advance(60000);
    assert.equal(sockets.length, 0);
    env.goOnline();
    clock.advance(0);
    assert.equal(sockets.length, 1);
  });
});

describe('tokens', () => {
  test('getToken supplies the connect token; token_expiring refreshes it', async () => {
    const calls = [];
    let n = 0;
    const { client, socket, of } = setup({
      getToken: async (ctx) => {
        calls.push(ctx);
        return `token-${++n}`;
      },
    });
    client.connect();
    await flush();
    assert.equal(socket().accept().token, 'token-1');
    socket().receive({ type: 'token_expiring', expires_in_ms: 30000 });
    await flush();
    assert.deepEqual(calls, [{ reason: 'connect' }, { reason: 'refresh', expiresInMs: 30000 }]);
    const refresh = socket().last('refresh');
    assert.equal(refresh.token, 'token-2');
    socket().receive({ type: 'refreshed', id: refresh.id, expires_in_ms: 3600000 });
    assert.deepEqual(of('tokenRefreshed'), [{ expiresInMs: 3600000 }]);
    assert.equal(client.state, 'connected');
    // A refused refresh is reported; the connection stays.
    socket().receive({ type: 'token_expiring', expires_in_ms: 30000 });
    await flush();
    socket().receive({ type: 'error', id: socket().last('refresh').id, code: 'unauthorized', message: 'expired' });
    assert.equal(of('error').at(-1).code, 'unauthorized');
    assert.equal(client.state, 'connected');
  });

  test('token_expiring without getToken is reported', () => {
    const { socket, of } = connected({ token: 'static' });
    socket().receive({ type: 'token_expiring', expires_in_ms: 30000 });
    assert.equal(of('error').at(-1).code, 'token_expiring');
    assert.equal(socket().sentOf('refresh').length, 0);
  });

  test('a getToken failure on refresh is reported and the connection stays until the server closes', async () => {
    let n = 0;
    const { client, socket, of } = setup({
      getToken: async () => {
        if (++n === 2) throw new Error('nope');
        return `t${n}`;
      },
    });
    client.connect();
    await flush();
    socket().accept();
    socket().receive({ type: 'token_expiring', expires_in_ms: 1000 });
    await flush();
    assert.equal(of('error').at(-1).code, 'token_failed');
    assert.equal(client.state, 'connected');
  });

  test('close() during getToken: no socket is opened afterwards', async () => {
    let release;
    const { client, sockets } = setup({ getToken: () => new Promise((r) => (release = r)) });
    client.connect();
    client.close();
    release('late');
    await flush();
    assert.equal(sockets.length, 0);
    assert.equal(client.state, 'closed');
  });
});
