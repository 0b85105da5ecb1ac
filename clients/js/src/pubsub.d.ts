// Type declarations of pubsub.js, the entry point of the pubsub-gateway JavaScript client (the
// public API it re-exports; the other modules in src/ are internal and have no declarations).

/** The WebSocket subprotocol this client speaks. */
export const PROTOCOL: 'pubsub.v1.json';

export type ClientState = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed' | 'failed';

/** `websocket`: GET /ws. `http_stream`: GET /stream with commands POSTed; `sse`: the same as Server-Sent Events (docs/protocol.md, HTTP streaming). */
export type TransportName = 'websocket' | 'http_stream' | 'sse';
export type SubscriptionState = 'pending' | 'subscribing' | 'subscribed' | 'unsubscribed' | 'failed';

export const STATES: readonly ClientState[];

/** A position in a channel's stream: offsets are only comparable within one epoch. */
export interface Position {
  epoch: string;
  offset: number;
}

/** Error codes of the client itself; server codes (docs/protocol.md) are passed through as they are. */
export type ClientErrorCode =
  | 'client_closed'
  | 'disconnected'
  | 'timeout'
  | 'queue_full'
  | 'bad_request'
  | 'already_subscribed'
  | 'not_subscribed'
  | 'unauthorized'
  | 'forbidden'
  | 'policy_violation'
  | 'logged_out'
  | 'reconnect_failed'
  | 'token_failed'
  | 'token_expiring'
  | 'invalid_url'
  | 'no_transport'
  | 'no_websocket'
  | 'unsupported_protocol'
  | 'listener_error';

export type ServerErrorCode =
  | 'bad_request'
  | 'unknown_command'
  | 'invalid_channel'
  | 'already_subscribed'
  | 'not_subscribed'
  | 'too_large'
  | 'unavailable'
  | 'internal'
  | 'unauthorized'
  | 'forbidden'
  | 'limit_exceeded'
  | 'rate_limited'
  | 'not_available';

export class PubSubError extends Error {
  constructor(code: string, message: string, details?: Record<string, unknown>);
  readonly name: 'PubSubError';
  /** The server's error code, or one of the client's own. */
  readonly code: ClientErrorCode | ServerErrorCode | (string & {});
  /** For errors caused by a close: its code. */
  readonly closeCode?: number;
  /** For subscription errors: the channel. */
  readonly channel?: string;
}

export interface TokenRequest {
  /** 'connect': first connection; 'unauthorized': the server closed with 4001; 'refresh': token_expiring. */
  reason: 'connect' | 'unauthorized' | 'refresh';
  /** With 'refresh': how long the current token is still valid. */
  expiresInMs?: number;
}

export interface HeartbeatOptions {
  /** Ping after this much silence from the server (ms). Default 15000. */
  interval?: number;
  /** Declare the connection dead when nothing arrives this long after the ping (ms). Default 10000. */
  timeout?: number;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

/** Where online/offline and visibility changes come from (default: window and document, if any). */
export interface ClientEnvironment {
  isOnline(): boolean;
  listen(handlers: { online(): void; offline(): void; visible(): void }): () => void;
}

export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** A static JWT sent in `connect`. */
  token?: string;
  /** Returns a (fresh) JWT: for the first connection when no `token` is set, after close 4001, and on token_expiring. */
  getToken?: (request: TokenRequest) => string | Promise<string>;
  /** Only 'json' (the `pubsub.v1.json` subprotocol) is supported. */
  protocol?: 'json';
  /** WebSocket implementation; default the global one (browsers, Node 22+). Passing one makes `transports` default to `['websocket']`. */
  WebSocket?: WebSocketConstructor;
  /**
   * Transports to try, in order (default `['websocket', 'http_stream', 'sse']`, or `['websocket']` when
   * `WebSocket` is given): an attempt that never opens (a proxy refusing the upgrade, or holding it
   * until `connectTimeout`) moves the next attempt to the next transport; one that opened keeps it.
   * Recovery with `since` works across transports.
   */
  transports?: TransportName[];
  /** fetch implementation for `http_stream` and `sse`; default the global one. */
  fetch?: typeof fetch;
  /** EventSource implementation for `sse`; default the global one (browsers). */
  EventSource?: new (url: string) => EventSource;
  /** Backoff: first cap in ms (default 500). */
  minReconnectDelay?: number;
  /** Backoff: largest delay in ms (default 20000). */
  maxReconnectDelay?: number;
  /** A connection up this long resets the backoff (ms, default 10000). */
  stableAfter?: number;
  /** Random extra delay, up to this, added to a server reconnect hint (ms, default 500). */
  hintJitter?: number;
  /** Consecutive failed attempts before giving up (default Infinity). */
  maxReconnectAttempts?: number;
  /** From opening the socket to `connected` (ms, default 10000). */
  connectTimeout?: number;
  /** Default timeout of publish(), ping(), presence() and presenceStats(), counted from the call (ms, default 10000). */
  requestTimeout?: number;
  /** Most commands waiting for a connection (default 1000). */
  maxQueue?: number;
  /** Application heartbeat; false disables it. */
  heartbeat?: HeartbeatOptions | false;
  /** Injectable timers (tests). */
  timers?: Partial<Timers>;
  /** Injectable randomness in [0, 1) (tests). */
  random?: () => number;
  /** Online/visibility source; false for none. */
  environment?: ClientEnvironment | false;
}

export const DEFAULTS: Readonly<Required<Omit<ClientOptions, 'token' | 'getToken' | 'protocol' | 'WebSocket' | 'timers' | 'random' | 'environment' | 'heartbeat'>> & { heartbeat: Required<HeartbeatOptions> }>;

export interface Session {
  /** The client id the server gave this connection. */
  client: string;
  /** The node the connection is on. */
  node: string;
  /** How often the server sends WebSocket pings. */
  pingIntervalMs: number;
}

export interface DisconnectedEvent {
  /** Close code (1006 also for failed upgrades and for connections the client declared dead). */
  code: number;
  reason: string;
  wasClean: boolean;
  /** Whether the socket had opened (false: the upgrade failed, e.g. 503). */
  opened?: boolean;
  /** True when the client itself closed the socket (connect/heartbeat/subscribe timeout). */
  local?: boolean;
  /** The server's reconnect hint (reconnect_after_ms) in the close reason, if any. */
  hint: number | null;
  willReconnect: boolean;
  /** Milliseconds until the next attempt; null when not reconnecting or waiting to be online. */
  delay: number | null;
  /** Consecutive failed attempts so far (the next `connecting` carries the same number). */
  attempt: number;
}

export interface ClientEvents {
  state: { state: ClientState; previous: ClientState };
  connecting: { attempt: number; url: string; transport: TransportName };
  connected: Session;
  disconnected: DisconnectedEvent;
  tokenRefreshed: { expiresInMs: number };
  /**
   * A backend subscribed this connection (POST /api/subscribe) to a channel the client had no
   * Subscription for: the client made one (`server: true`, already 'subscribed') and resubscribes
   * it with `since` after reconnects. Attach its `message` listeners here; none is missed.
   */
  serverSubscribed: Subscription;
  /** A backend unsubscribed this connection (POST /api/unsubscribe): the Subscription is 'unsubscribed' and forgotten. */
  serverUnsubscribed: Subscription;
  error: PubSubError;
}

export interface MessageMeta {
  channel: string;
  epoch: string;
  offset: number;
  /** True when the data came as data_b64 (it is then a Uint8Array). */
  binary: boolean;
  /** True for messages replayed by a recovery. */
  replayed: boolean;
}

export interface SubscribedInfo extends Position {
  channel: string;
  /** Present only for subscribes with `since`. */
  recovered?: boolean;
  /** True when the server subscribed the connection (POST /api/subscribe), not a reply to our `subscribe`. */
  server?: true;
}

export interface UnsubscribedInfo {
  channel: string;
  /** True when a backend unsubscribed the connection (POST /api/unsubscribe); false for unsubscribe(). */
  server: boolean;
}

export interface RecoveredInfo extends Position {
  channel: string;
  /** How many missed messages were replayed. */
  replayed: number;
}

export interface RecoveryFailedInfo extends Position {
  channel: string;
  /** The position the client asked to resume from. */
  since: Position;
}

export interface GapInfo extends Position {
  channel: string;
}

/** One connection in a channel's presence. */
export interface PresenceMember<I = unknown> {
  /** The connection's client id (`Session.client` on its side), unique across nodes. */
  client: string;
  /** The token's `sub`; '' for an anonymous connection. */
  user: string;
  /** The token's `info` claim, when it had one. */
  info?: I;
}

export interface PresenceStats {
  /** Connections in the channel. */
  clients: number;
  /** Distinct users among them. */
  users: number;
}

export interface JoinInfo {
  /** The user's first connection in the channel: the user joined, not just another tab. */
  first: boolean;
}

export interface LeaveInfo {
  /** It was the user's last connection in the channel: the user left. */
  last: boolean;
}

export interface SubscriptionEvents<T = unknown> {
  message: [data: T, meta: MessageMeta];
  subscribed: [info: SubscribedInfo];
  recovered: [info: RecoveredInfo];
  recoveryFailed: [info: RecoveryFailedInfo];
  gap: [info: GapInfo];
  join: [member: PresenceMember, info: JoinInfo];
  leave: [member: PresenceMember, info: LeaveInfo];
  unsubscribed: [info: UnsubscribedInfo];
  error: [error: PubSubError];
}

export interface SubscribeOptions<T = unknown> {
  onMessage?: (data: T, meta: MessageMeta) => void;
  onSubscribed?: (info: SubscribedInfo) => void;
  /** The replay after a reconnect was delivered in full. */
  onRecovered?: (info: RecoveredInfo) => void;
  /** Missed messages could not be replayed: resync from your backend; the stream continues at the reply position. */
  onRecoveryFailed?: (info: RecoveryFailedInfo) => void;
  /** Publications up to `offset` in `epoch` could not be delivered: resync from your backend. */
  onGap?: (info: GapInfo) => void;
  /** A connection joined the channel (namespaces with join_leave). */
  onJoin?: (member: PresenceMember, info: JoinInfo) => void;
  /** A connection left the channel (namespaces with join_leave). */
  onLeave?: (member: PresenceMember, info: LeaveInfo) => void;
  /** The subscription ended: unsubscribe() (`server: false`) or POST /api/unsubscribe (`server: true`). */
  onUnsubscribed?: (info: UnsubscribedInfo) => void;
  /** The server refused the subscription (then it is 'failed') or had a transient error (it is retried). */
  onError?: (error: PubSubError) => void;
  /** Resume from a position saved earlier (the first subscribe then carries `since`). */
  since?: Position;
}

export class Subscription<T = unknown> {
  readonly channel: string;
  /** True when the server made it (POST /api/subscribe) and the client adopted it (`serverSubscribed`). */
  readonly server: boolean;
  readonly state: SubscriptionState;
  /** Position of the last message processed (null before the first reply). */
  readonly position: Position | null;
  /** True while a recovery's replayed messages are still being delivered. */
  readonly recovering: boolean;
  /** Resolves at the first `subscribed`; rejects if the server refused the subscription. */
  readonly ready: Promise<void>;
  /** Stops the subscription; resolves when the server confirmed (or at once when not connected). */
  unsubscribe(): Promise<void>;
  /**
   * The channel's members, one per connection. Only while 'subscribed' (else rejects with
   * `not_subscribed`); `not_available` when the channel's namespace keeps no presence.
   */
  presence<I = unknown>(options?: { timeout?: number }): Promise<PresenceMember<I>[]>;
  /** How many connections and distinct users are in the channel; rejects like presence(). */
  presenceStats(options?: { timeout?: number }): Promise<PresenceStats>;
  on<E extends keyof SubscriptionEvents<T>>(event: E, listener: (...args: SubscriptionEvents<T>[E]) => void): () => void;
  once<E extends keyof SubscriptionEvents<T>>(event: E, listener: (...args: SubscriptionEvents<T>[E]) => void): () => void;
  off<E extends keyof SubscriptionEvents<T>>(event: E, listener: (...args: SubscriptionEvents<T>[E]) => void): void;
  listenerCount(event: keyof SubscriptionEvents<T>): number;
}

export interface Published extends Position {
  channel: string;
}

export class Client {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  /** The transport of the current (or next) attempt. */
  readonly transport: TransportName;
  readonly state: ClientState;
  readonly session: Session | null;
  readonly subscriptions: Map<string, Subscription>;
  getSubscription(channel: string): Subscription | null;
  /** Starts connecting (and reconnecting); resolves at the next `connected`, rejects if the client fails or closes first. */
  connect(): Promise<Session>;
  /** Closes and stops reconnecting; queued and in-flight commands reject with `client_closed`. Subscriptions are kept. */
  close(): void;
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions<T>): Subscription<T>;
  /** Publishes any JSON value (Uint8Array/ArrayBuffer: binary, sent as data_b64). Not retried after a disconnect. */
  publish(channel: string, data: unknown, options?: { timeout?: number }): Promise<Published>;
  /** Application ping; resolves with the round-trip time in ms. */
  ping(options?: { timeout?: number }): Promise<number>;
  on<E extends keyof ClientEvents>(event: E, listener: (payload: ClientEvents[E]) => void): () => void;
  once<E extends keyof ClientEvents>(event: E, listener: (payload: ClientEvents[E]) => void): () => void;
  off<E extends keyof ClientEvents>(event: E, listener: (payload: ClientEvents[E]) => void): void;
  listenerCount(event: keyof ClientEvents): number;
}

/** Exponential backoff with full jitter: random in [0, min(max, min * 2^attempt)). */
export function backoffDelay(attempt: number, options?: { min?: number; max?: number; random?: () => number }): number;

/** reconnect_after_ms of a JSON close reason, or null. */
export function parseReconnectHint(reason: unknown): number | null;
