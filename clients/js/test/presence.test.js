// Unit tests of presence in the client: presence() and presenceStats() requests and their
// errors, join and leave events routed to their subscription, on a fake WebSocket.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { PubSubError } from '../src/pubsub.js';
import { setup, connected, EPOCH } from './support/fakes.js';

describe('presence', () => {
  /** A connected client with a subscribed subscription to `channel`. */
  function subscribed(channel = 'room:1', subOptions = {}, options) {
    const t = connected(options);
    const sub = t.client.subscribe(channel, subOptions);
    t.socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0 }));
    return { ...t, sub };
  }

  test('presence() sends the command and resolves with the members; info only when sent', async () => {
    const { sub, socket } = subscribed();
    const p = sub.presence();
    const frame = socket().last('presence');
    assert.deepEqual(frame, { type: 'presence', id: frame.id, channel: 'room:1' });
    socket().receive({
      type: 'presence',
      id: frame.id,
      channel: 'room:1',
      members: [
        { client: 'n1-k2j3-17', user: 'ann', info: { name: 'Ann' } },
        { client: 'n2-x9-3', user: '' },
      ],
    });
    const members = await p;
    assert.deepEqual(members, [
      { client: 'n1-k2j3-17', user: 'ann', info: { name: 'Ann' } },
      { client: 'n2-x9-3', user: '' },
    ]);
    assert.equal('info' in members[1], false);
  });

  test('presenceStats() sends presence_stats and resolves with {clients, users}', async () => {
    const { sub, socket } = subscribed();
    const p = sub.presenceStats();
    const frame = socket().last('presence_stats');
    assert.deepEqual(frame, { type: 'presence_stats', id: frame.id, channel: 'room:1' });
    socket().receive({ type: 'presence_stats', id: frame.id, channel: 'room:1', clients: 3, users: 2 });
    assert.deepEqual(await p, { clients: 3, users: 2 });
  });

  test('replies are matched by id, among other commands', async () => {
    const { client, sub, socket } = subscribed();
    const members = sub.presence();
    const stats = sub.presenceStats();
    const published = client.publish('room:1', 'hi');
    assert.deepEqual(
      socket().sent.map((m) => m.type),
      ['connect', 'subscribe', 'presence', 'presence_stats', 'publish'],
    );
    socket().receive({ type: 'published', id: socket().last('publish').id, channel: 'room:1', epoch: EPOCH, offset: 1 });
    socket().receive({ type: 'presence_stats', id: socket().last('presence_stats').id, channel: 'room:1', clients: 1, users: 1 });
    socket().receive({ type: 'presence', id: socket().last('presence').id, channel: 'room:1', members: [{ client: 'gw-1-1', user: '' }] });
    assert.deepEqual(await members, [{ client: 'gw-1-1', user: '' }]);
    assert.deepEqual(await stats, { clients: 1, users: 1 });
    assert.equal((await published).offset, 1);
  });

  test('error replies reject with the server code; the connection and the subscription stay', async () => {
    const { client, sub, socket, of } = subscribed('news');
    for (const [query, type] of [
      [() => sub.presence(), 'presence'],
      [() => sub.presenceStats(), 'presence_stats'],
    ]) {
      for (const code of ['not_available', 'forbidden', 'unavailable', 'rate_limited']) {
        const p = query();
        socket().receive({ type: 'error', id: socket().last(type).id, code, message: `${code}!` });
        const err = await p.catch((e) => e);
        assert.ok(err instanceof PubSubError, `${type} ${code}`);
        assert.equal(err.code, code);
        assert.equal(err.message, `${code}!`);
      }
    }
    assert.equal(of('error').length, 0, 'answered errors are not reported as client errors');
    assert.equal(client.state, 'connected');
    assert.equal(sub.state, 'subscribed');
  });

  test('not subscribed: rejects with not_subscribed and sends nothing', async () => {
    const { client, socket } = setup();
    const offline = client.subscribe('room:1');
    await assert.rejects(offline.presence(), { code: 'not_subscribed', channel: 'room:1' });
    client.connect();
    socket().accept();
    assert.equal(offline.state, 'subscribing');
    await assert.rejects(offline.presence(), { code: 'not_subscribed' });
    await assert.rejects(offline.presenceStats(), { code: 'not_subscribed' });
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0 }));
    offline.unsubscribe(); // unsubscribed at once; the server's confirmation does not matter here
    await assert.rejects(offline.presence(), { code: 'not_subscribed' });
    const refused = client.subscribe('secret');
    socket().receive({ type: 'error', id: socket().last('subscribe').id, code: 'forbidden', message: 'no' });
    await refused.ready.catch(() => {});
    await assert.rejects(refused.presence(), { code: 'not_subscribed' });
    assert.equal(socket().sentOf('presence').length + socket().sentOf('presence_stats').length, 0);
  });

  test('a query in flight rejects with disconnected, timeout or client_closed', async () => {
    const a = subscribed();
    const lost = a.sub.presence();
    a.socket().serverClose(1006);
    await assert.rejects(lost, { code: 'disconnected' });
    await assert.rejects(a.sub.presence(), { code: 'not_subscribed' }, 'pending again until resubscribed');

    const b = subscribed('room:1', {}, { requestTimeout: 2000, heartbeat: false });
    const slow = b.sub.presenceStats();
    const custom = b.sub.presence({ timeout: 300 });
    b.clock.advance(300);
    await assert.rejects(custom, { code: 'timeout' });
    b.clock.advance(1700);
    await assert.rejects(slow, { code: 'timeout' });
    assert.equal(b.client.state, 'connected');

    const c = subscribed();
    const closing = c.sub.presence();
    c.client.close();
    await assert.rejects(closing, { code: 'client_closed' });
  });

  test('join and leave events reach the subscription of their channel, with first/last', () => {
    const got = [];
    const { client, socket, sub } = subscribed('room:1', {
      onJoin: (member, info) => got.push(['onJoin', member, info]),
      onLeave: (member, info) => got.push(['onLeave', member, info]),
    });
    const other = client.subscribe('room:2');
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0 }));
    sub.on('join', (member, info) => got.push(['join', member, info]));
    sub.on('leave', (member, info) => got.push(['leave', member, info]));
    other.on('join', () => got.push(['wrong subscription']));
    const ann = { client: 'n1-k2j3-17', user: 'ann', info: { name: 'Ann' } };
    socket().receive({ type: 'join', channel: 'room:1', member: ann, first: true });
    socket().receive({ type: 'join', channel: 'room:1', member: { client: 'n1-k2j3-18', user: 'ann' }, first: false });
    socket().receive({ type: 'leave', channel: 'room:1', member: { client: 'n1-k2j3-17', user: 'ann' }, last: false });
    socket().receive({ type: 'leave', channel: 'room:1', member: { client: 'n1-k2j3-18', user: 'ann' }, last: true });
    socket().receive({ type: 'join', channel: 'elsewhere', member: ann, first: true }); // no subscription: dropped
    assert.deepEqual(got, [
      ['onJoin', ann, { first: true }],
      ['join', ann, { first: true }],
      ['onJoin', { client: 'n1-k2j3-18', user: 'ann' }, { first: false }],
      ['join', { client: 'n1-k2j3-18', user: 'ann' }, { first: false }],
      ['onLeave', { client: 'n1-k2j3-17', user: 'ann' }, { last: false }],
      ['leave', { client: 'n1-k2j3-17', user: 'ann' }, { last: false }],
      ['onLeave', { client: 'n1-k2j3-18', user: 'ann' }, { last: true }],
      ['leave', { client: 'n1-k2j3-18', user: 'ann' }, { last: true }],
    ]);
  });

  test('join and leave before the subscribed reply and after unsubscribe are not delivered', async () => {
    const { client, socket, of } = connected();
    const got = [];
    const sub = client.subscribe('room:1', { onJoin: (m) => got.push(`join ${m.client}`), onLeave: (m) => got.push(`leave ${m.client}`) });
    socket().receive({ type: 'join', channel: 'room:1', member: { client: 'early', user: '' }, first: true });
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0 }));
    socket().receive({ type: 'join', channel: 'room:1', member: { client: 'live', user: '' }, first: true });
    const done = sub.unsubscribe();
    socket().receive({ type: 'leave', channel: 'room:1', member: { client: 'live', user: '' }, last: true });
    socket().receive({ type: 'unsubscribed', id: socket().last('unsubscribe').id, channel: 'room:1' });
    await done;
    assert.deepEqual(got, ['join live']);
    assert.equal(of('error').length, 0);
  });
});
