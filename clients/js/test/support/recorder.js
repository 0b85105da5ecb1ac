// Records what a Client and its Subscriptions report, with timestamps, for assertions.

import { waitFor } from './processes.js';

export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

export function record(client) {
  const events = [];
  for (const name of ['state', 'connecting', 'connected', 'disconnected', 'error', 'tokenRefreshed']) {
    client.on(name, (payload) => events.push({ name, at: Date.now(), payload }));
  }
  return {
    events,
    of: (name) => events.filter((e) => e.name === name).map((e) => e.payload),
    timed: (name) => events.filter((e) => e.name === name),
    count: (name) => events.filter((e) => e.name === name).length,
    /** Waits for the `n`th event `name` (1-based) and returns its payload. */
    async nth(name, n, timeout = 15000) {
      await waitFor(() => events.filter((e) => e.name === name).length >= n, { timeout, message: `${n} "${name}" events` });
      return events.filter((e) => e.name === name)[n - 1].payload;
    },
  };
}

/** Collects a subscription's messages and recovery events. */
export function collect(sub) {
  const messages = [];
  const recovered = [];
  const recoveryFailed = [];
  const gaps = [];
  const subscribed = [];
  sub.on('message', (data, meta) => messages.push({ data, ...meta }));
  sub.on('recovered', (info) => recovered.push(info));
  sub.on('recoveryFailed', (info) => recoveryFailed.push(info));
  sub.on('gap', (info) => gaps.push(info));
  sub.on('subscribed', (info) => subscribed.push(info));
  return {
    messages,
    recovered,
    recoveryFailed,
    gaps,
    subscribed,
    offsets: () => messages.map((m) => m.offset),
    values: () => messages.map((m) => m.data),
    until: (n, timeout = 15000) => waitFor(() => messages.length >= n, { timeout, message: () => `${n} messages on ${sub.channel} (have offsets ${messages.map((m) => m.offset).join(',')})` }),
  };
}
