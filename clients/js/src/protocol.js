// The JSON encoding of protocol v1 (subprotocol `pubsub.v1.json`) on the client's side: the
// text of the publish, ping and presence commands, and parsing the server's frames.

import { asBytes, toBase64 } from './base64.js';
import { PubSubError } from './errors.js';

/**
 * The publish command for `data` (any JSON value; bytes are sent as `data_b64`), as a function
 * of the request id. Throws a PubSubError `bad_request` if `data` cannot be sent as JSON.
 */
export function publishCommand(channel, data) {
  let body;
  const bytes = asBytes(data);
  try {
    if (bytes) body = `"data_b64":${JSON.stringify(toBase64(bytes))}`;
    else {
      const json = JSON.stringify(data);
      if (json === undefined) throw new TypeError(`${typeof data} is not a JSON value`);
      body = `"data":${json}`;
    }
  } catch (cause) {
    throw new PubSubError('bad_request', `data cannot be sent as JSON: ${cause.message}`, { cause });
  }
  const channelJson = JSON.stringify(channel);
  return (id) => `{"type":"publish","id":${id},"channel":${channelJson},${body}}`;
}

/** The ping command, as a function of the request id. */
export const pingCommand = (id) => `{"type":"ping","id":${id}}`;

/** A command that names only a channel (`presence`, `presence_stats`), as a function of the request id. */
export function channelCommand(type, channel) {
  const head = `{"type":${JSON.stringify(type)},"id":`;
  const tail = `,"channel":${JSON.stringify(channel)}}`;
  return (id) => `${head}${id}${tail}`;
}

/** A presence member of a reply or a join/leave event: {client, user, info?} (`info` only when sent). */
export function parseMember(member) {
  const parsed = { client: member?.client, user: member?.user ?? '' };
  if (member && member.info !== undefined) parsed.info = member.info;
  return parsed;
}

/** A server frame as an object, or null for anything that is not a JSON object in a text frame. */
export function parseFrame(data) {
  if (typeof data !== 'string') return null; // binary frames are not part of the JSON encoding
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return null;
  }
  return msg && typeof msg === 'object' ? msg : null;
}
