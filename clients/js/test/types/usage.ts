// Compiled (not run) by test/types.test.js: the declarations describe the API as documented.
import { Client, PubSubError, backoffDelay, parseReconnectHint, type Position, type ClientState, type PresenceMember, type PresenceStats } from '@pubsub-gateway/client';

const client = new Client('wss://example.com/ws', {
  getToken: async ({ reason }) => (reason === 'refresh' ? 'new' : 'first'),
  protocol: 'json',
  minReconnectDelay: 250,
  maxReconnectDelay: 30000,
  heartbeat: { interval: 10000, timeout: 5000 },
});
const state: ClientState = client.state;
client.on('disconnected', ({ code, willReconnect, delay, hint }) => {
  const n: number = code;
  const b: boolean = willReconnect;
  const d: number | null = delay;
  const h: number | null = hint;
  void [n, b, d, h];
});
client.on('connected', ({ node, pingIntervalMs }) => void [node.toUpperCase(), pingIntervalMs.toFixed()]);
client.on('error', (err) => void (err instanceof PubSubError && err.code));

interface Chat {
  from: string;
  text: string;
}
const sub = client.subscribe<Chat>('chat:lobby', {
  onMessage: (data, { offset, epoch, replayed }) => void [data.from, data.text, offset + 1, epoch.length, replayed],
  onRecovered: ({ replayed }) => void replayed,
  onRecoveryFailed: ({ since, epoch, offset }) => void [since.offset, epoch, offset],
  onGap: ({ epoch, offset }) => void [epoch, offset],
  onJoin: (member, { first }) => void [member.client, member.user, first],
  since: { epoch: 'e', offset: 3 },
});
const position: Position | null = sub.position;
sub.on('message', (data) => void data.text);
sub.on('join', ({ client, user, info }, { first }) => void [client.length, user.length, info, first === true]);
sub.on('leave', (member: PresenceMember, { last }) => void [member.client, last === true]);
sub.on('unsubscribed', ({ channel, server }) => void [channel.length, server === true]);

// Server-side subscriptions (POST /api/subscribe, /api/unsubscribe).
client.on('serverSubscribed', (adopted) => {
  const server: boolean = adopted.server;
  adopted.on('message', (data, { offset }) => void [data, offset + 1]);
  adopted.on('subscribed', ({ server: byServer, epoch }) => void [byServer === true, epoch]);
  void [server, adopted.channel, adopted.position?.offset];
});
client.on('serverUnsubscribed', (gone) => void [gone.channel, gone.state === 'unsubscribed']);
client.subscribe('inbox:1', { onUnsubscribed: ({ server }) => void (server && 'by the backend') });

async function main() {
  const session = await client.connect();
  void session.client;
  const { epoch, offset } = await client.publish('chat:lobby', { from: 'ann', text: 'hi' });
  void [epoch.length, offset + 1];
  const rtt: number = await client.ping();
  await sub.ready;
  const members: PresenceMember[] = await sub.presence({ timeout: 2000 });
  const named = await sub.presence<{ name: string }>();
  void [members.map((m) => m.user), named.map((m) => m.info?.name.toUpperCase())];
  const stats: PresenceStats = await sub.presenceStats();
  void [stats.clients + stats.users];
  try {
    await sub.presence();
  } catch (err) {
    if (err instanceof PubSubError && err.code === 'not_available') void err.message;
  }
  await sub.unsubscribe();
  client.close();
  void [rtt, position, state, backoffDelay(3, { min: 100 }), parseReconnectHint('{}')];
}
void main;

// @ts-expect-error: only JSON is supported
new Client('ws://x', { protocol: 'protobuf' });
// @ts-expect-error: unknown event
client.on('nope', () => {});
// @ts-expect-error: data is typed
sub.on('message', (data) => void data.missing);
// @ts-expect-error: a join carries `first`, not `last`
sub.on('join', (_member, { last }) => void last);
// @ts-expect-error: serverSubscribed carries the Subscription, not an info object
client.on('serverSubscribed', ({ since }) => void since);
// @ts-expect-error: info is unknown unless presence<I>() says what it is
void (async () => (await sub.presence())[0].info.name)();
