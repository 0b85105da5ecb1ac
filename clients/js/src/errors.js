// PubSubError: the one error class of this client, carrying a machine-readable `code`.

/** An error with a machine-readable `code` (the server's error code, or one of the client's). */
export class PubSubError extends Error {
  constructor(code, message, details = {}) {
    super(message, details.cause !== undefined ? { cause: details.cause } : undefined);
    this.name = 'PubSubError';
    this.code = code;
    for (const [key, value] of Object.entries(details)) {
      if (key !== 'cause') this[key] = value;
    }
  }
}
