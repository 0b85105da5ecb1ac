// In a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by playwright-core
// loads the demo page from the gateway (--demo: GET /demo/), subscribes through the page,
// publishes from the page and from a backend over HTTP; then the page's node is killed
// (SIGKILL) and restarted on the same port while the backend publishes through the other
// node, and the page must show every message exactly once, in order. Then the same with the
// browser offline: the page waits for `online` instead of retrying, and recovers.
// A screenshot is saved to test-artifacts/browser-recovery.png.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join, sep } from 'node:path';

import { Gateway, HaProxy, JS_ROOT, Redis, gatewayHas, stopAll, waitFor } from './support/processes.js';
import { range } from './support/recorder.js';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = join(JS_ROOT, 'test-artifacts');
const CHANNEL = 'demo:news';

/**
 * What the demo page loads: the page at /demo/ and every module of the SDK (src/, subfolders
 * included) at /demo/<path>, since the page imports ./pubsub.js and that imports the rest.
 */
const DEMO_FILES = [
  ['/demo/', 'demo/index.html'],
  ...readdirSync(join(JS_ROOT, 'src'), { recursive: true })
    .map((file) => file.split(sep).join('/'))
    .filter((file) => file.endsWith('.js'))
    .sort()
    .map((file) => [`/demo/${file}`, `src/${file}`]),
];

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  await stopAll();
});

/** Headless Chromium in a throwaway profile, closed (and the profile removed) when the file ends. */
async function launchChromium(options = {}) {
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(join(tmpdir(), 'js-client-chromium-'));
  cleanups.push(async () => rmSync(profile, { recursive: true, force: true }));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    ...options,
  });
  cleanups.push(() => context.close());
  return context;
}

/**
 * Only for gateway binaries without --demo: serves the same files the gateway would, at the
 * same paths.
 */
async function staticDemoServer() {
  const files = Object.fromEntries(
    DEMO_FILES.map(([path, file]) => [path, [file.endsWith('.html') ? 'text/html; charset=utf-8' : 'text/javascript; charset=utf-8', join(JS_ROOT, file)]]),
  );
  const server = createServer((req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname];
    if (!file) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': file[0] }).end(readFileSync(file[1]));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  return `http://127.0.0.1:${server.address().port}`;
}

test('the demo page subscribes, shows publications, and recovers every message after its node is killed and restarted', async () => {
  const demoBuiltIn = gatewayHas('--demo');
  const redis = await Redis.start();
  const common = ['--redis-url', redis.url, ...(demoBuiltIn ? ['--demo'] : [])];
  const pageNode = await Gateway.start([...common, '--node-id', 'page-node']);
  const backend = await Gateway.start([...common, '--node-id', 'backend-node']);

  let pageUrl;
  if (demoBuiltIn) {
    pageUrl = `${pageNode.httpUrl}/demo/`;
    // The gateway compiles the files in: a stale binary would test old copies.
    for (const [path, file] of DEMO_FILES) {
      const served = await fetch(`${pageNode.httpUrl}${path}`).then((r) => r.text());
      assert.ok(served === readFileSync(join(JS_ROOT, file), 'utf8'), `the gateway serves this ${file} at ${path} (rebuild it after changing the file)`);
    }
  } else {
    console.log('# this gateway binary has no --demo: serving the demo from a local static server');
    pageUrl = `${await staticDemoServer()}/demo/?url=${encodeURIComponent(pageNode.wsUrl)}`;
  }

  const context = await launchChromium({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));

  const rows = () =>
    page.$$eval('#messages tr.message', (trs) =>
      trs.reverse().map((tr) => ({
        channel: tr.dataset.channel,
        offset: Number(tr.dataset.offset),
        data: tr.querySelector('td.data').textContent,
        recovered: tr.querySelector('.tag') !== null,
      })),
    );
  const waitRows = (n, timeout = 20000) =>
    waitFor(async () => (await rows()).length >= n, { timeout, interval: 50, message: `the page to show ${n} messages` });
  const state = () => page.getAttribute('#state', 'data-state');
  const events = () => page.$$eval('#events li', (lis) => lis.map((li) => li.textContent));

  try {
    // A token in the URL would land in history, logs and Referer headers:
    // the page must not take it from there.
    await page.goto(`${pageUrl}${pageUrl.includes('?') ? '&' : '?'}token=leaked.in.url`);
    assert.equal(await page.inputValue('#token'), '', 'the page never reads a token from its URL');
    assert.equal(await page.inputValue('#url'), pageNode.wsUrl, 'the page connects to ws://<its host>/ws by default');
    await waitFor(async () => (await state()) === 'connected', { message: 'the page to connect' });

    // Subscribe through the form.
    await page.fill('#channel', CHANNEL);
    await page.click('#subscribe');
    await page.waitForSelector(`#subscriptions li[data-channel="${CHANNEL}"][data-state="subscribed"]`);

    // Publish from the page (WebSocket publish command) ...
    await page.fill('#pub-channel', CHANNEL);
    await page.fill('#pub-data', '{"n":1}');
    await page.click('#publish');
    await waitFor(async () => (await page.textContent('#pub-result')).includes('published'), { message: 'the page publish to be acknowledged' });
    // ... and from a backend over HTTP.
    for (const n of range(2, 5)) await backend.publish(CHANNEL, { n });
    await waitRows(5);

    // The page's node dies; the backend keeps publishing through the other node.
    await pageNode.kill('SIGKILL');
    await waitFor(async () => ['disconnected', 'connecting'].includes(await state()), { message: 'the page to notice the dead node' });
    for (const n of range(6, 10)) await backend.publish(CHANNEL, { n });
    await pageNode.spawn();
    await waitFor(async () => (await state()) === 'connected', { timeout: 30000, message: 'the page to reconnect to the restarted node' });
    await waitRows(10);
    for (const n of range(11, 12)) await backend.publish(CHANNEL, { n });
    await waitRows(12);

    const shown = await rows();
    assert.deepEqual(
      shown.map((r) => r.offset),
      range(1, 12),
      'every message exactly once, in order',
    );
    assert.deepEqual(
      shown.map((r) => JSON.parse(r.data).n),
      range(1, 12),
    );
    assert.ok(shown.every((r) => r.channel === CHANNEL));
    assert.deepEqual(
      shown.map((r) => r.recovered),
      range(1, 12).map((n) => n >= 6 && n <= 10),
      'messages 6-10 came from the recovery',
    );
    const log = await events();
    assert.ok(log.some((e) => e.includes(`recovered ${CHANNEL}: 5 missed message(s) replayed`)), log.join('\n'));
    assert.equal(await page.textContent('#message-count'), '12');

    // Offline: a drop while the browser is offline waits for `online` instead of retrying,
    // then reconnects and recovers what was published meanwhile.
    await context.setOffline(true);
    await waitFor(() => page.evaluate(() => navigator.onLine === false), { message: 'the page to be offline' });
    const attemptsBefore = (await events()).filter((e) => e.includes('connecting to')).length;
    await pageNode.kill('SIGKILL');
    await waitFor(async () => (await events()).some((e) => e.includes('waiting to be online')), { message: 'the page to wait for online' });
    await backend.publish(CHANNEL, { n: 13 });
    await pageNode.spawn();
    assert.equal((await events()).filter((e) => e.includes('connecting to')).length, attemptsBefore, 'no attempts while offline');
    await context.setOffline(false);
    await waitRows(13);
    const after = await rows();
    assert.deepEqual(after.map((r) => r.offset), range(1, 13));
    assert.equal(after[12].recovered, true);
    assert.deepEqual(pageErrors, []);
  } finally {
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'browser-recovery.png'), fullPage: true }).catch(() => {});
  }
});

/** The value of an unlabelled sample in a Prometheus text body. */
function metric(text, name) {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

test('the browser negotiates permessage-deflate, receives compressed publications, and its own compressed publishes arrive intact', async () => {
  const node = await Gateway.start(['--node-id', 'deflate-node']);
  const context = await launchChromium();
  const page = await context.newPage();
  await page.goto(`${node.httpUrl}/healthz`);
  // A JSON event of about 1 KiB, the kind an app receives.
  const event = (n) => ({
    event: 'order.updated',
    n,
    items: Array.from({ length: 10 }, (_, i) => ({ sku: `SKU-${i}`, name: `Product number ${i} with a descriptive name`, quantity: i + 1, price: { amount: 1999 + i, currency: 'EUR' } })),
  });

  // Two sockets in the page: one subscribes and collects, one publishes.
  const extensions = await page.evaluate(async (url) => {
    const open = () =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(url, 'pubsub.v1.json');
        ws.onopen = () => resolve(ws);
        ws.onerror = () => reject(new Error('WebSocket did not open'));
      });
    const reader = await open();
    const writer = await open();
    window.received = [];
    window.replies = [];
    reader.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.type === 'message') window.received.push(m.data);
    };
    writer.onmessage = (e) => window.replies.push(JSON.parse(e.data));
    await new Promise((resolve) => {
      reader.addEventListener('message', function once(e) {
        if (JSON.parse(e.data).type === 'subscribed') resolve();
      });
      reader.send(JSON.stringify({ type: 'subscribe', id: 1, channel: 'deflate:feed' }));
    });
    window.writer = writer;
    return [reader.extensions, writer.extensions];
  }, node.wsUrl);
  for (const negotiated of extensions) {
    assert.match(negotiated, /^permessage-deflate/, 'Chromium offered the extension and the gateway accepted it');
    assert.match(negotiated, /client_no_context_takeover/);
  }

  // Publications from a backend reach the page compressed.
  for (const n of [1, 2, 3]) await node.publish('deflate:feed', event(n));
  await waitFor(() => page.evaluate(() => window.received.length >= 3), { message: 'the page to receive 3 publications' });
  assert.deepEqual(await page.evaluate(() => window.received), [event(1), event(2), event(3)]);
  const before = await fetch(`${node.httpUrl}/metrics`).then((r) => r.text());
  assert.equal(metric(before, 'gateway_compression_connections'), 2);
  const compressedIn = metric(before, 'gateway_compression_bytes_in_total');
  const compressedOut = metric(before, 'gateway_compression_bytes_out_total');
  assert.ok(compressedOut > 0 && compressedIn > 3 * compressedOut, `compressed ${compressedIn} -> ${compressedOut} bytes`);

  // The page publishes (Chromium compresses its messages); the other socket receives intact.
  await page.evaluate((data) => window.writer.send(JSON.stringify({ type: 'publish', id: 9, channel: 'deflate:feed', data })), event(4));
  await waitFor(() => page.evaluate(() => window.received.length >= 4), { message: 'the page to receive its own publish' });
  assert.deepEqual((await page.evaluate(() => window.received))[3], event(4));
  assert.equal((await page.evaluate(() => window.replies)).find((r) => r.id === 9)?.type, 'published');
  const history = await fetch(`${node.httpUrl}/api/history?channel=deflate:feed`).then((r) => r.json());
  assert.deepEqual(history.publications.at(-1).data, event(4), 'stored as published');
});

test('behind a proxy that refuses WebSocket upgrades and is not sticky, the page falls back to HTTP streaming and loses nothing when its node is killed', { skip: !gatewayHas('--demo') && 'this gateway binary has no --demo' }, async () => {
  const redis = await Redis.start();
  const nodes = await Promise.all([1, 2].map((i) => Gateway.start(['--redis-url', redis.url, '--demo', '--node-id', `stream-${i}`])));
  const haproxy = await HaProxy.startBlockingUpgrades(nodes);
  await waitFor(async () => (await fetch(`${haproxy.httpUrl}/readyz`).catch(() => null))?.status === 200, { message: 'HAProxy forwards' });
  const context = await launchChromium();
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  const channel = 'demo:fallback';
  const offsets = () => page.$$eval('#messages tr.message', (trs) => trs.reverse().map((tr) => Number(tr.dataset.offset)));
  const state = () => page.getAttribute('#state', 'data-state');
  const transport = () => page.getAttribute('#state', 'data-transport');
  try {
    // The page itself comes through the proxy, and so does its ws://<host>/ws.
    await page.goto(`${haproxy.httpUrl}/demo/`);
    await waitFor(async () => (await state()) === 'connected', { timeout: 30000, message: 'the page to connect' });
    assert.equal(await transport(), 'http_stream', 'the refused upgrade made the page fall back');
    await page.fill('#channel', channel);
    await page.click('#subscribe');
    await page.waitForSelector(`#subscriptions li[data-channel="${channel}"][data-state="subscribed"]`);
    // The page's own publishes are POSTs; round-robin lands some on the other node.
    for (const n of range(1, 4)) {
      await page.fill('#pub-channel', channel);
      await page.fill('#pub-data', JSON.stringify({ n }));
      await page.click('#publish');
      await waitFor(async () => (await offsets()).length >= n, { message: `the page to show its publish ${n}` });
    }
    const counts = await Promise.all(
      nodes.map(async (node) => metric(await fetch(`${node.httpUrl}/metrics`).then((r) => r.text()), 'gateway_stream_commands_forwarded_total') ?? 0),
    );
    assert.ok(counts.some((n) => n > 0), `some POSTs were forwarded between the nodes: ${counts}`);

    // The page's node dies while a backend keeps publishing through the other one.
    const sessionNode = await page.evaluate(() => document.querySelector('#events').textContent.match(/connected to node (stream-\d)/)?.[1]);
    const victim = nodes.find((n) => n.nodeId === sessionNode);
    const survivor = nodes.find((n) => n !== victim);
    assert.ok(victim, `the page's node is known (${sessionNode})`);
    await victim.kill('SIGKILL');
    for (const n of range(5, 9)) await survivor.publish(channel, { n });
    await waitFor(async () => (await state()) === 'connected' && (await offsets()).length >= 9, {
      timeout: 30000,
      message: 'the page to reconnect and recover',
    });
    assert.equal(await transport(), 'http_stream');
    for (const n of range(10, 11)) await survivor.publish(channel, { n });
    await waitFor(async () => (await offsets()).length >= 11, { message: 'the page to receive live messages again' });
    assert.deepEqual(await offsets(), range(1, 11), 'every message exactly once, in order');

    // The third transport: the same session as Server-Sent Events through EventSource.
    await victim.spawn();
    const sse = await context.newPage();
    sse.on('pageerror', (err) => pageErrors.push(err.message));
    await sse.goto(`${haproxy.httpUrl}/demo/?transports=sse`);
    await waitFor(async () => (await sse.getAttribute('#state', 'data-state')) === 'connected', { timeout: 30000, message: 'the sse page to connect' });
    assert.equal(await sse.getAttribute('#state', 'data-transport'), 'sse');
    await sse.fill('#channel', channel);
    await sse.click('#subscribe');
    await sse.waitForSelector(`#subscriptions li[data-channel="${channel}"][data-state="subscribed"]`);
    await survivor.publish(channel, { n: 12 });
    await waitFor(async () => (await sse.$$('#messages tr.message')).length >= 1, { message: 'the sse page to receive' });
    assert.deepEqual(pageErrors, []);
  } finally {
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'browser-http-stream.png'), fullPage: true }).catch(() => {});
  }
});
