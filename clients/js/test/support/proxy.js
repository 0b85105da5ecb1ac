// A TCP proxy between the client and a gateway that a test can use to cut the client's
// connection (both sockets destroyed), silence it (bytes dropped both ways, the TCP
// connection stays: a dead line no close reaches), or refuse new connections.

import { createServer, connect } from 'node:net';

export class CutProxy {
  #server;
  #pairs = new Set();
  #refusing = false;

  static async start(targetPort) {
    const proxy = new CutProxy(targetPort);
    await new Promise((resolve, reject) => {
      proxy.#server.once('error', reject);
      proxy.#server.listen(0, '127.0.0.1', resolve);
    });
    proxy.port = proxy.#server.address().port;
    return proxy;
  }

  constructor(targetPort) {
    this.targetPort = targetPort;
    this.connections = 0;
    this.#server = createServer((client) => this.#accept(client));
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  #accept(client) {
    if (this.#refusing) {
      client.destroy();
      return;
    }
    this.connections++;
    const upstream = connect({ port: this.targetPort, host: '127.0.0.1' });
    const pair = { client, upstream, silenced: false };
    this.#pairs.add(pair);
    const forget = () => {
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('data', (chunk) => pair.silenced || upstream.write(chunk));
    upstream.on('data', (chunk) => pair.silenced || client.write(chunk));
    for (const socket of [client, upstream]) {
      socket.on('error', forget);
      socket.on('close', () => pair.silenced || forget());
    }
  }

  /** Drops every open connection at once (the client sees an abnormal close, 1006). */
  cut() {
    for (const pair of this.#pairs) {
      pair.silenced = true;
      pair.client.resetAndDestroy?.() ?? pair.client.destroy();
      pair.upstream.destroy();
    }
    this.#pairs.clear();
  }

  /** From now on, open connections carry nothing either way (new ones work). */
  silence() {
    for (const pair of this.#pairs) pair.silenced = true;
  }

  /** While on, new connections are closed at once. */
  refuse(on) {
    this.#refusing = on;
  }

  get open() {
    return this.#pairs.size;
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.#server.close(resolve));
  }
}
