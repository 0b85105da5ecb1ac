// The Client's options: validating what the application passed, filling in DEFAULTS, and
// resolving the injectable pieces (transport, timers, randomness, online/visibility source).

import { DEFAULTS, PROTOCOL } from './constants.js';
import { defaultEnvironment, noEnvironment } from './environment.js';
import { PubSubError } from './errors.js';
import { transportFor } from './transport.js';

/**
 * Checks `url` and `options` (throws TypeError or PubSubError, as the Client constructor does)
 * and returns them resolved: {opts, openTransport, timers, random, env, token}.
 */
export function resolveOptions(url, options) {
  if (typeof url !== 'string' || url === '') throw new TypeError('url must be a ws:// or wss:// URL');
  if (options.protocol != null && options.protocol !== 'json') {
    throw new PubSubError('unsupported_protocol', `protocol "${options.protocol}" is not supported by this client: only "json" (${PROTOCOL})`);
  }
  if (options.token != null && typeof options.token !== 'string') throw new TypeError('token must be a string');
  if (options.getToken != null && typeof options.getToken !== 'function') throw new TypeError('getToken must be a function');
  const heartbeat = options.heartbeat === false ? false : { ...DEFAULTS.heartbeat, ...(options.heartbeat ?? {}) };
  const opts = { ...DEFAULTS, ...options, heartbeat };
  const openTransport = transportFor(options);
  const timers = options.timers ?? {};
  return {
    opts,
    openTransport,
    timers: {
      setTimeout: timers.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms)),
      clearTimeout: timers.clearTimeout ?? ((handle) => globalThis.clearTimeout(handle)),
      now: timers.now ?? (() => Date.now()),
    },
    random: options.random ?? Math.random,
    env: options.environment === false ? noEnvironment : options.environment ?? defaultEnvironment(),
    token: options.token ?? null,
  };
}
