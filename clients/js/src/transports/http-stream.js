// HttpStreamTransport: the Transport (see ../transport.js) over plain HTTP, for networks whose
// proxies break WebSocket upgrades (docs/protocol.md, "HTTP streaming"). `GET /stream` is a
// chunked response of protocol v1 JSON messages, one per line, whose first line names the
// session (transport `http_stream`); or, given an EventSource (transport `sse`),
// `GET /stream?format=sse`, the same messages as Server-Sent Events, for proxies that buffer
// other responses but pass event streams. Commands go out as
// `POST /stream/commands?session=<id>`, to whichever node the load balancer picks (the gateway
// forwards them to the session's node: no sticky sessions).
//
// Commands keep their order: one POST is in flight at a time, and what is sent meanwhile goes
// out together in the next one (at most 64 per POST). A POST the gateway refuses, or that
// fails, ends the connection (1006) like a broken socket would; the Client then reconnects and
// recovers as after any other disconnect. A `queue_full` answer (429) is retried after a second.

import { CLOSE_ABNORMAL } from '../constants.js';

/** Commands one POST carries at most (the gateway's bound). */
const MAX_PER_POST = 64;
/** Wait before retrying a POST the session had no room for (its Retry-After). */
const QUEUE_FULL_RETRY_MS = 1000;

/**
 * The HTTP origin of a gateway URL: ws://host/ws → http://host, wss:// → https://; http(s)
 * URLs are taken as they are. Throws TypeError for anything else.
 */
export function httpBase(url) {
  const parsed = new URL(url);
  const scheme = { 'ws:': 'http:', 'wss:': 'https:', 'http:': 'http:', 'https:': 'https:' }[parsed.protocol];
  if (!scheme) throw new TypeError(`not a ws://, wss://, http:// or https:// URL: ${url}`);
  return `${scheme}//${parsed.host}`;
}

export class HttpStreamTransport {
  #fetch;
  #base;
  #handlers;
  #timers;
  #abort = new AbortController();
  #session = null;
  #queue = [];
  #posting = false;
  #retry = null;
  #events = null;
  #done = false;

  /**
   * Starts `GET /stream`, or with `EventSource` `GET /stream?format=sse` (throws TypeError for a
   * bad URL).
   */
  constructor(fetchImpl, url, handlers, timers, EventSource = null) {
    this.#fetch = fetchImpl;
    this.#base = httpBase(url);
    this.#handlers = handlers;
    this.#timers = timers;
    // Never call a handler from inside the factory: the read starts after it returned.
    Promise.resolve().then(() => (EventSource ? this.#listen(EventSource) : this.#read()));
  }

  /** Queues one command for the next POST; false when the stream is not open. */
  send(text) {
    if (this.#done || this.#session === null) return false;
    this.#queue.push(text);
    this.#post();
    return true;
  }

  /** Ends the stream from the client's side; no handler is called afterwards. */
  close() {
    this.#finish();
  }

  async #read() {
    let response;
    try {
      response = await this.#fetch(`${this.#base}/stream`, { cache: 'no-store', signal: this.#abort.signal });
    } catch {
      return this.#closed(CLOSE_ABNORMAL, '');
    }
    if (this.#done) return;
    if (!response.ok || !response.body) {
      response.body?.cancel().catch(() => {});
      return this.#closed(CLOSE_ABNORMAL, `GET /stream answered ${response.status}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch {
        return this.#closed(CLOSE_ABNORMAL, '');
      }
      if (this.#done) return;
      if (chunk.done) return this.#closed(CLOSE_ABNORMAL, 'the stream ended without a close');
      buffer += decoder.decode(chunk.value, { stream: true });
      let at;
      while ((at = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, at);
        buffer = buffer.slice(at + 1);
        if (line !== '') this.#line(line);
        if (this.#done) return;
      }
    }
  }

  /** The stream as Server-Sent Events: each event's data is one message. */
  #listen(EventSource) {
    if (this.#done) return;
    let events;
    try {
      events = new EventSource(`${this.#base}/stream?format=sse`);
    } catch {
      return this.#closed(CLOSE_ABNORMAL, '');
    }
    this.#events = events;
    events.onmessage = (event) => !this.#done && this.#line(String(event.data));
    events.addEventListener('close', (event) => {
      if (this.#done) return;
      let msg = {};
      try {
        msg = JSON.parse(String(event.data));
      } catch {
        // a close without a readable payload: still the end
      }
      this.#line(JSON.stringify({ ...msg, type: 'close' }));
    });
    // EventSource would reconnect by itself, into a new session nobody knows: the connection
    // ends here instead, and the Client reconnects and recovers as after any other drop.
    events.onerror = () => !this.#done && this.#closed(CLOSE_ABNORMAL, '');
  }

  #line(line) {
    let msg = null;
    try {
      msg = JSON.parse(line);
    } catch {
      // not JSON: passed on like any text frame (the Client ignores it)
    }
    if (this.#session === null) {
      if (msg?.type !== 'session' || typeof msg.session !== 'string') {
        return this.#closed(CLOSE_ABNORMAL, 'the stream did not start with its session');
      }
      this.#session = msg.session;
      return this.#handlers.onOpen();
    }
    if (msg?.type === 'ping') return this.#handlers.onMessage(null); // traffic, nothing to handle
    if (msg?.type === 'close') {
      // As a WebSocket close: a reconnect hint travels as a JSON reason.
      const reason = msg.reconnect_after_ms != null
        ? JSON.stringify({ reason: msg.reason ?? '', reconnect_after_ms: msg.reconnect_after_ms })
        : String(msg.reason ?? '');
      return this.#closed(Number(msg.code) || CLOSE_ABNORMAL, reason, true);
    }
    this.#handlers.onMessage(line);
  }

  async #post() {
    if (this.#posting || this.#retry !== null || this.#done || this.#queue.length === 0) return;
    this.#posting = true;
    const batch = this.#queue.splice(0, MAX_PER_POST);
    let status;
    try {
      const response = await this.#fetch(`${this.#base}/stream/commands?session=${encodeURIComponent(this.#session)}`, {
        method: 'POST',
        // text/plain: a cross-origin POST needs no preflight (the session id is the secret).
        headers: { 'Content-Type': 'text/plain' },
        body: `${batch.join('\n')}\n`,
        signal: this.#abort.signal,
      });
      status = response.status;
      response.body?.cancel().catch(() => {});
    } catch {
      status = 0;
    }
    this.#posting = false;
    if (this.#done) return;
    if (status === 429) {
      this.#queue.unshift(...batch);
      this.#retry = this.#timers.setTimer(QUEUE_FULL_RETRY_MS, () => {
        this.#retry = null;
        this.#post();
      });
      return;
    }
    if (status < 200 || status > 299) {
      return this.#closed(CLOSE_ABNORMAL, status ? `POST /stream/commands answered ${status}` : '');
    }
    this.#post();
  }

  #closed(code, reason, wasClean = false) {
    if (this.#done) return;
    this.#finish();
    this.#handlers.onClose({ code, reason, wasClean });
  }

  #finish() {
    this.#done = true;
    if (this.#events) {
      this.#events.onmessage = this.#events.onerror = null;
      this.#events.close();
    }
    if (this.#retry !== null) this.#timers.clearTimer(this.#retry);
    this.#retry = null;
    this.#queue = [];
    this.#abort.abort();
  }
}
