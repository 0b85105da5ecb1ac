// Real processes for the integration and browser tests: gateway nodes, redis-server and
// HAProxy, each on a free loopback port, all killed when the test file ends (even on failure).

import { spawn, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, '../../../..');
export const JS_ROOT = resolve(here, '../..');
export const GATEWAY_BIN = process.env.GATEWAY_BIN || join(REPO, 'target/debug/gateway');
export const HAPROXY_CFG = join(REPO, 'deploy/haproxy/haproxy.cfg');
export const JWT_SECRET = 'js-client-test-secret-that-is-at-least-32-bytes';

const children = new Set();
const tempDirs = new Set();

function killEverything() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // gone
    }
  }
  children.clear();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}
process.on('exit', killEverything);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    killEverything();
    process.exit(130);
  });
}

/** Kills every process started by this module (call from after()). */
export async function stopAll() {
  const waits = [...children].map((child) => exited(child, 5000).catch(() => {}));
  killEverything();
  await Promise.all(waits);
}

function exited(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`process ${child.pid} did not exit within ${ms} ms`)), ms);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** A free loopback port (bound to port 0, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Writes `text` to a file `name` in a temporary folder removed when the test file ends (config files). */
export function tempFile(name, text) {
  const dir = mkdtempSync(join(tmpdir(), 'js-client-'));
  tempDirs.add(dir);
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `condition` (sync or async) until it returns a truthy value; fails after `timeout`. */
export async function waitFor(condition, { timeout = 10000, interval = 20, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${typeof message === 'function' ? message() : message}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(interval);
  }
}

async function canConnect(port) {
  const { connect } = await import('node:net');
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

// ---- redis-server --------------------------------------------------------------------------

export class Redis {
  constructor(port, extra) {
    this.port = port;
    this.extra = extra;
    this.dir = mkdtempSync(join(tmpdir(), 'js-client-redis-'));
    tempDirs.add(this.dir);
    this.child = null;
  }

  static async start({ persistent = false } = {}) {
    const extra = persistent ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'];
    const redis = new Redis(await freePort(), extra);
    await redis.spawn();
    return redis;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  async spawn() {
    this.child = track(
      spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--daemonize', 'no', '--loglevel', 'warning', '--dir', this.dir, ...this.extra], {
        stdio: 'ignore',
      }),
    );
    await waitFor(() => canConnect(this.port), { timeout: 10000, message: `redis-server on ${this.port}` });
  }

  async kill() {
    if (!this.child) return;
    const child = this.child;
    this.child = null;
    child.kill('SIGKILL');
    await exited(child, 5000);
  }

  async restart() {
    await this.kill();
    await this.spawn();
  }
}

// ---- gateway -------------------------------------------------------------------------------

let helpText = null;
/** The gateway's --help, to see which flags the binary has. */
export function gatewayHelp() {
  if (helpText === null) {
    if (!existsSync(GATEWAY_BIN)) {
      throw new Error(`gateway binary not found at ${GATEWAY_BIN}: build it (cargo build -p gateway) or set GATEWAY_BIN`);
    }
    helpText = execFileSync(GATEWAY_BIN, ['--help'], { encoding: 'utf8' });
  }
  return helpText;
}

export const gatewayHas = (flag) => gatewayHelp().includes(flag);

/**
 * Whether the binary knows every key of the config file at `path` (`--print-config` does not
 * report an unknown field); any other problem with the file is left for the test to show.
 */
export function gatewayKnowsConfig(path) {
  gatewayHelp();
  try {
    execFileSync(GATEWAY_BIN, ['--config', path, '--print-config'], { encoding: 'utf8', stdio: 'pipe' });
    return true;
  } catch (err) {
    return !/unknown field/.test(`${err.stdout}${err.stderr}`);
  }
}

export class Gateway {
  constructor(args, port) {
    this.args = args;
    this.port = port;
    this.child = null;
    this.log = [];
  }

  /** Starts `gateway --listen 127.0.0.1:<port> --log-format json <args>`; with `redis`, waits until ready. */
  static async start(args = [], { port, waitReady = true } = {}) {
    gatewayHelp();
    const gateway = new Gateway(args, port ?? (await freePort()));
    await gateway.spawn({ waitReady });
    return gateway;
  }

  get addr() {
    return `127.0.0.1:${this.port}`;
  }

  /** The --node-id it was started with. */
  get nodeId() {
    const i = this.args.indexOf('--node-id');
    return i >= 0 ? this.args[i + 1] : null;
  }

  get wsUrl() {
    return `ws://${this.addr}/ws`;
  }

  get httpUrl() {
    return `http://${this.addr}`;
  }

  async spawn({ waitReady = true } = {}) {
    const child = track(spawn(GATEWAY_BIN, ['--listen', this.addr, '--log-format', 'json', ...this.args], { stdio: ['ignore', 'ignore', 'pipe'] }));
    this.child = child;
    let buffered = '';
    let listening = false;
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      buffered += chunk;
      let newline;
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        this.log.push(line);
        if (line.includes('"gateway listening"')) listening = true;
      }
    });
    await waitFor(() => listening || child.exitCode !== null, { timeout: 10000, message: `gateway on ${this.addr} to listen` });
    if (!listening) throw new Error(`gateway exited with ${child.exitCode}: ${this.log.join('\n')}`);
    if (waitReady) await this.waitReady();
  }

  async waitReady() {
    await waitFor(async () => (await fetch(`${this.httpUrl}/readyz`)).status === 200, { timeout: 10000, message: `gateway ${this.addr} ready` });
  }

  get running() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Sends `signal`; with SIGKILL (default) also waits for the process to be gone. */
  async kill(signal = 'SIGKILL') {
    if (!this.child) return;
    const child = this.child;
    child.kill(signal);
    if (signal === 'SIGKILL') {
      await exited(child, 5000);
      this.child = null;
    }
  }

  /** Waits for the process to exit on its own (after SIGTERM); returns the exit code. */
  async waitExit(ms = 15000) {
    const code = await exited(this.child, ms);
    this.child = null;
    return code;
  }

  async restart() {
    await this.kill();
    await this.spawn();
  }

  /** POST /api/publish; returns the parsed answer ({channel, epoch, offset}). */
  async publish(channel, data, { apiKey } = {}) {
    const headers = { 'content-type': 'application/json' };
    if (apiKey) headers.authorization = `Bearer ${apiKey}`;
    const answer = await fetch(`${this.httpUrl}/api/publish`, { method: 'POST', headers, body: JSON.stringify({ channel, data }) });
    const body = await answer.json();
    if (answer.status !== 200) throw new Error(`publish answered ${answer.status}: ${JSON.stringify(body)}`);
    return body;
  }
}

/** POST /api/publish on any HTTP base URL. */
export async function httpPublish(base, channel, data) {
  const answer = await fetch(`${base}/api/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel, data }) });
  const body = await answer.json();
  if (answer.status !== 200) throw new Error(`publish answered ${answer.status}: ${JSON.stringify(body)}`);
  return body;
}

// ---- HAProxy -------------------------------------------------------------------------------

export class HaProxy {
  /** HAProxy with the shipped deploy/haproxy/haproxy.cfg in front of exactly three nodes. */
  static async start(nodes) {
    if (nodes.length !== 3) throw new Error('deploy/haproxy/haproxy.cfg needs exactly three nodes');
    const haproxy = new HaProxy();
    haproxy.port = await freePort();
    haproxy.child = track(
      spawn('haproxy', ['-db', '-f', HAPROXY_CFG], {
        stdio: 'ignore',
        env: {
          ...process.env,
          HAPROXY_BIND: `127.0.0.1:${haproxy.port}`,
          GATEWAY_1: nodes[0].addr,
          GATEWAY_2: nodes[1].addr,
          GATEWAY_3: nodes[2].addr,
        },
      }),
    );
    await waitFor(() => canConnect(haproxy.port), { timeout: 10000, message: 'haproxy listening' });
    return haproxy;
  }

  /**
   * HAProxy standing for the proxies the HTTP-streaming transport is for: it refuses every
   * WebSocket upgrade (403) and spreads requests round-robin over `nodes`, with no sticky
   * sessions, so a client's POSTs land on every node. Unhealthy nodes (/readyz) are skipped,
   * and a request a dead node refused is sent to another one.
   */
  static async startBlockingUpgrades(nodes) {
    const servers = nodes.map((n, i) => `    server gw${i + 1} ${n.addr} check inter 300ms fall 2 rise 1`).join('\n');
    const haproxy = new HaProxy();
    haproxy.port = await freePort();
    const config = tempFile(
      'haproxy-no-upgrade.cfg',
      `global
    log stdout format raw local0 info
defaults
    mode http
    option redispatch
    retries 3
    timeout connect 2s
    timeout http-request 10s
    timeout client 60s
    timeout server 60s
frontend web
    bind 127.0.0.1:${haproxy.port}
    http-request deny deny_status 403 if { hdr(upgrade) -i websocket }
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /readyz
${servers}
`,
    );
    haproxy.child = track(spawn('haproxy', ['-db', '-f', config], { stdio: 'ignore' }));
    await waitFor(() => canConnect(haproxy.port), { timeout: 10000, message: 'haproxy listening' });
    return haproxy;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }
}

// ---- tokens --------------------------------------------------------------------------------

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** An HS256 JWT for `sub`, valid for `ttl` seconds, with extra `claims` (channels, publish). */
export function mintToken(sub, ttl, claims = {}, secret = JWT_SECRET) {
  const header = b64url({ alg: 'HS256', typ: 'JWT' });
  const payload = b64url({ sub, exp: Math.floor(Date.now() / 1000) + ttl, ...claims });
  const signature = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}
