// Unit tests of server-side subscriptions (POST /api/subscribe, /api/unsubscribe) in the
// client: adopting the `subscribed` notice (`server: true`, no id) as a Subscription, resuming
// it with `since` after a reconnect, the `unsubscribed` notice, and the races with the client's
// own subscribe/unsubscribe, on a fake WebSocket.

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { Subscription } from '../src/pubsub.js';
import { connected, EPOCH } from './support/fakes.js';

/** A connected client recording serverSubscribed/serverUnsubscribed. */
function setup(options) {
  const t = connected(options);
  const adopted = [];
  const dropped = [];
  t.client.on('serverSubscribed', (sub) => adopted.push(sub));
  t.client.on('serverUnsubscribed', (sub) => dropped.push(sub));
  return { ...t, adopted, dropped };
}

const notice = (channel, offset, epoch = EPOCH) => ({ type: 'subscribed', channel, epoch, offset, server: true });
const gone = (channel) => ({ type: 'unsubscribed', channel, server: true });
const message = (channel, offset, data = offset, epoch = EPOCH) => ({ type: 'message', channel, epoch, offset, data });

/** Records a subscription's messages and lifecycle events. */
function watch(sub) {
  const events = [];
  sub.on('message', (data, meta) => events.push(['message', data, meta.offset, meta.replayed]));
  for (const name of ['subscribed', 'recovered', 'recoveryFailed', 'unsubscribed', 'error']) sub.on(name, (info) => events.push([name, info]));
  return events;
}

describe('server-side subscriptions', () => {
  test('a subscribed notice becomes a subscribed server Subscription, announced by serverSubscribed', async () => {
    const { client, socket, adopted, of } = setup();
    const got = [];
    client.on('serverSubscribed', (sub) => {
      // Already subscribed at the notice's position when the app sees it.
      got.push([sub.state, sub.position, sub.server]);
      sub.on('message', (data, meta) => got.push(['message', data, meta.offset]));
    });
    socket().receive(notice('inbox:42', 7));
    assert.equal(adopted.length, 1);
    const sub = adopted[0];
    assert.ok(sub instanceof Subscription);
    assert.equal(sub.channel, 'inbox:42');
    assert.equal(sub.server, true);
    assert.equal(client.getSubscription('inbox:42'), sub);
    assert.deepEqual([...client.subscriptions.keys()], ['inbox:42']);
    await sub.ready;
    socket().receive(message('inbox:42', 7, 'seen')); // at the position: already delivered
    socket().receive(message('inbox:42', 8, 'new'));
    assert.deepEqual(got, [
      ['subscribed', { epoch: EPOCH, offset: 7 }, true],
      ['message', 'new', 8],
    ]);
    assert.equal(socket().sentOf('subscribe').length, 0, 'nothing to send: the server subscribed the connection');
    // The app's own subscribe of that channel is refused as for any existing subscription.
    assert.throws(() => client.subscribe('inbox:42'), { code: 'already_subscribed' });
    assert.equal(of('error').length, 0);
  });

  test('after a reconnect it is resubscribed with since and recovers like any subscription', () => {
    const { socket, adopted, clock } = setup();
    socket().receive(notice('inbox:42', 7));
    const sub = adopted[0];
    const events = watch(sub);
    socket().receive(message('inbox:42', 8));
    socket().serverClose(1006);
    assert.equal(sub.state, 'pending');
    clock.advance(1000);
    socket().accept();
    const frame = socket().last('subscribe');
    assert.deepEqual(frame, { type: 'subscribe', channel: 'inbox:42', since: { epoch: EPOCH, offset: 8 }, id: frame.id });
    socket().receive({ type: 'subscribed', id: frame.id, channel: 'inbox:42', epoch: EPOCH, offset: 10, recovered: true });
    socket().receive(message('inbox:42', 9));
    socket().receive(message('inbox:42', 10));
    socket().receive(message('inbox:42', 11));
    assert.deepEqual(events, [
      ['message', 8, 8, false],
      ['subscribed', { channel: 'inbox:42', epoch: EPOCH, offset: 10, recovered: true }],
      ['message', 9, 9, true],
      ['message', 10, 10, true],
      ['recovered', { channel: 'inbox:42', epoch: EPOCH, offset: 10, replayed: 2 }],
      ['message', 11, 11, false],
    ]);
    assert.equal(sub.server, true);
    assert.equal(adopted.length, 1, 'serverSubscribed only for the notice');
  });

  test('an unsubscribed notice ends it: unsubscribed {server: true}, serverUnsubscribed, not resubscribed', () => {
    const { client, socket, adopted, dropped, clock } = setup();
    socket().receive(notice('inbox:42', 7));
    const sub = adopted[0];
    const events = watch(sub);
    socket().receive(message('inbox:42', 8));
    socket().receive(gone('inbox:42'));
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(dropped, [sub]);
    assert.equal(client.getSubscription('inbox:42'), null);
    socket().receive(message('inbox:42', 9)); // none should follow; dropped if one did
    assert.deepEqual(events, [
      ['message', 8, 8, false],
      ['unsubscribed', { channel: 'inbox:42', server: true }],
    ]);
    assert.equal(socket().sentOf('unsubscribe').length, 0, 'the server did it: nothing to send');
    socket().receive(gone('inbox:42')); // again: nothing to do
    assert.equal(dropped.length, 1);
    socket().serverClose(1006);
    clock.advance(1000);
    socket().accept();
    assert.equal(socket().sentOf('subscribe').length, 0, 'not resubscribed');
    // A later server-side subscribe makes a new one.
    socket().receive(notice('inbox:42', 9));
    assert.equal(adopted.length, 2);
    assert.notEqual(adopted[1], sub);
  });

  test('the app may unsubscribe from it: unsubscribe is sent, unsubscribed {server: false}', async () => {
    const { client, socket, adopted, dropped } = setup();
    socket().receive(notice('inbox:42', 7));
    const sub = adopted[0];
    const events = watch(sub);
    const done = sub.unsubscribe();
    const frame = socket().last('unsubscribe');
    assert.deepEqual(frame, { type: 'unsubscribe', channel: 'inbox:42', id: frame.id });
    socket().receive({ type: 'unsubscribed', id: frame.id, channel: 'inbox:42' });
    await done;
    assert.deepEqual(events, [['unsubscribed', { channel: 'inbox:42', server: false }]]);
    assert.equal(dropped.length, 0);
    assert.equal(client.getSubscription('inbox:42'), null);
  });

  test("the app's own subscriptions: a notice for a subscribed one changes nothing; unsubscribe() reports server: false", async () => {
    const { client, socket, adopted, of } = setup();
    const seen = [];
    const sub = client.subscribe('news', { onUnsubscribed: (info) => seen.push(info) });
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 3 }));
    const events = watch(sub);
    socket().receive(message('news', 4));
    socket().receive(notice('news', 2)); // not sent for a subscribed connection; never moves back
    assert.deepEqual(sub.position, { epoch: EPOCH, offset: 4 });
    socket().receive(message('news', 4));
    socket().receive(message('news', 5));
    assert.equal(adopted.length, 0);
    assert.equal(sub.server, false);
    assert.deepEqual(events.map((e) => e.slice(0, 3)), [
      ['message', 4, 4],
      ['message', 5, 5],
    ]);
    const done = sub.unsubscribe();
    assert.deepEqual(seen, [{ channel: 'news', server: false }]);
    socket().receive({ type: 'unsubscribed', id: socket().last('unsubscribe').id, channel: 'news' });
    await done;
    assert.equal(of('error').length, 0);
  });

  test('a notice while our subscribe is in flight is its answer; the already_subscribed reply is ignored', async () => {
    const { client, socket, adopted, of } = setup();
    const sub = client.subscribe('inbox:42');
    const events = watch(sub);
    socket().receive(notice('inbox:42', 7));
    assert.equal(sub.state, 'subscribed');
    await sub.ready;
    assert.equal(adopted.length, 0, 'the app already has a Subscription');
    assert.equal(sub.server, false);
    socket().receive({ type: 'error', id: socket().last('subscribe').id, code: 'already_subscribed', message: 'already subscribed' });
    assert.equal(sub.state, 'subscribed');
    socket().receive(message('inbox:42', 8));
    assert.deepEqual(events, [
      ['subscribed', { channel: 'inbox:42', epoch: EPOCH, offset: 7, recovered: undefined, server: true }],
      ['message', 8, 8, false],
    ]);
    assert.equal(of('error').length, 0);
  });

  test('a notice while a resubscribe with since is in flight: recovered only when nothing was missed', () => {
    for (const [offset, expected] of [
      [5, 'recovered'],
      [9, 'recoveryFailed'],
    ]) {
      const { client, socket, clock } = setup();
      const sub = client.subscribe('inbox:42');
      socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 5 }));
      const events = watch(sub);
      socket().serverClose(1006);
      clock.advance(1000);
      socket().accept();
      assert.deepEqual(socket().last('subscribe').since, { epoch: EPOCH, offset: 5 });
      socket().receive(notice('inbox:42', offset));
      assert.deepEqual(sub.position, { epoch: EPOCH, offset });
      assert.deepEqual(
        events.map((e) => e[0]),
        ['subscribed', expected],
        `notice at ${offset}`,
      );
    }
  });

  test('notices while our unsubscribe is in flight are ignored: the unsubscribe comes after them', async () => {
    const { client, socket, adopted, dropped } = setup();
    const sub = client.subscribe('inbox:42');
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 1 }));
    const done = sub.unsubscribe();
    socket().receive(notice('inbox:42', 1));
    socket().receive(gone('inbox:42'));
    assert.equal(adopted.length + dropped.length, 0);
    assert.equal(client.getSubscription('inbox:42'), null);
    socket().receive({ type: 'unsubscribed', id: socket().last('unsubscribe').id, channel: 'inbox:42' });
    await done;
    socket().receive(notice('inbox:42', 1)); // a server-side subscribe after our unsubscribe
    assert.equal(adopted.length, 1);
  });

  test('an unsubscribed notice while our subscribe is in flight is about an earlier subscription: ignored', async () => {
    const { client, socket, dropped } = setup();
    const sub = client.subscribe('inbox:42');
    socket().receive(gone('inbox:42'));
    assert.equal(sub.state, 'subscribing');
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0 }));
    assert.equal(sub.state, 'subscribed');
    assert.equal(dropped.length, 0);
  });

  test('replies carrying server: false and an id are still routed to their command', async () => {
    const { socket, client } = setup();
    const sub = client.subscribe('a');
    socket().answerSubscribes(() => ({ epoch: EPOCH, offset: 0, server: false }));
    await sub.ready;
    assert.equal(sub.state, 'subscribed');
  });
});
