/**
 * reversehttp.js: serve HTTP from a web page through a Reverse HTTP gateway.
 *
 * An ES module without dependencies or build step; it needs fetch, AbortController, EventTarget,
 * TextEncoder/TextDecoder and atob/btoa (every current browser, Node 20+, Deno).
 *
 *   import { ReverseHttpServer } from "/static/reversehttp_gateway/reversehttp.js";
 *   const server = new ReverseHttpServer({
 *     gateway: "https://gw.example/reversehttp",      // the Service URL
 *     name: "my-tab",
 *     handler: async (request) => ({
 *       status: 200,
 *       headers: [["Content-Type", "text/plain"]],
 *       body: `You asked for ${request.url}`,
 *     }),
 *   });
 *   await server.start();               // registers; server.publicUrl is the address to share
 *   ...
 *   await server.stop();                // stops polling and deletes the registration
 *
 * Encodings: "message/http" (the ReverseHttp long-poll: GET the Request URL, POST the reply to
 * it) or "json" (POST {private URL}/json, the reply riding on the next poll; CJ-01..CJ-08).
 * Events (an EventTarget): "registered" {publicUrl, privateUrl, created}, "request" {method, url,
 * status, duration, poller, requestingClient}, "error" {error, poller}, "stopped".
 * See docs/browser.md.
 */

const ENCODINGS = ["message/http", "json"];
const TOKEN_CHARS = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const FRAMING = new Set(["content-length", "transfer-encoding", "connection", "keep-alive"]);
const REASONS = {
  200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
  204: "No Content", 206: "Partial Content", 301: "Moved Permanently", 302: "Found",
  303: "See Other", 304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
  405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict", 410: "Gone",
  412: "Precondition Failed", 413: "Content Too Large", 415: "Unsupported Media Type",
  418: "I'm a teapot", 422: "Unprocessable Content", 429: "Too Many Requests",
  500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
  503: "Service Unavailable", 504: "Gateway Timeout",
};
const HANDLER_FAILED = "500 The application failed to handle this request";

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** A refusal or unexpected answer from the gateway; `status` is its HTTP status (0: none). */
export class GatewayError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = "GatewayError";
    this.status = status;
  }
}

// ---------------------------------------------------------------------------------------------
// Bytes and strings. Header text is kept as "byte strings" (one char per byte, like latin-1),
// which is how the gateway writes JSON events; bodies are Uint8Array.

function bytesToByteString(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    out += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return out;
}

function byteStringToBytes(text) {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code > 0xff) throw new TypeError("Not a byte string");
    bytes[i] = code;
  }
  return bytes;
}

/** Any JavaScript string as the byte string of its UTF-8 encoding (for header values). */
function toHeaderText(value) {
  return bytesToByteString(utf8Encoder.encode(String(value)));
}

/** Base64 of a Uint8Array. */
export function encodeBase64(bytes) {
  return btoa(bytesToByteString(bytes));
}

/** The bytes of a base64 string. */
export function decodeBase64(text) {
  return byteStringToBytes(atob(text));
}

function concatBytes(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function indexOfHeadEnd(bytes) {
  for (let i = 0; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
      return i;
    }
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// Wire formats.

/**
 * The links of a `Link` header as {rel: absolute URL}; the first link of each rel wins.
 * Relative URLs are resolved against `base`.
 */
export function parseLinkHeader(value, base) {
  const links = {};
  if (!value) return links;
  for (const match of value.matchAll(/<([^>]*)>((?:\s*;\s*[^;,]*)*)/g)) {
    const rel = /;\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))/i.exec(match[2]);
    if (!rel) continue;
    for (const name of (rel[1] ?? rel[2]).trim().toLowerCase().split(/\s+/)) {
      if (name && !(name in links)) links[name] = new URL(match[1], base).href;
    }
  }
  return links;
}

/** A request from the gateway, as handed to the handler. */
export class GatewayRequest {
  constructor({ method, url, httpVersion = "HTTP/1.1", headers = [], body, requestingClient = null,
    messageId = null }) {
    /** The method, e.g. "GET". */
    this.method = method;
    /** The request target as the requestor sent it: path and query (path mode: /label/...). */
    this.url = url;
    this.httpVersion = httpVersion;
    /** [name, value] pairs in their original order, duplicates kept. */
    this.headers = headers;
    /** The body, a Uint8Array (empty when there is none). */
    this.body = body ?? new Uint8Array(0);
    /** The requestor's address as "A.B.C.D:PORT" (opaque). */
    this.requestingClient = requestingClient;
    this.messageId = messageId;
  }

  /** The first value of header `name` (case-insensitive), or null. */
  header(name) {
    const wanted = name.toLowerCase();
    const found = this.headers.find(([n]) => n.toLowerCase() === wanted);
    return found ? found[1] : null;
  }

  /** The body decoded as UTF-8. */
  text() {
    return utf8Decoder.decode(this.body);
  }

  /** The body parsed as JSON. */
  json() {
    return JSON.parse(this.text());
  }
}

/**
 * Parse a `message/http` poll body: request line, CRLF-separated headers, then a body of
 * Content-Length bytes (RH-35, RH-37).
 */
export function parseEmbeddedRequest(bytes, requestingClient = null) {
  const end = indexOfHeadEnd(bytes);
  if (end < 0) throw new Error("Embedded request without an end of headers");
  const lines = bytesToByteString(bytes.subarray(0, end)).split("\r\n");
  const start = /^([^ ]+) ([^ ]+) (HTTP\/\d+\.\d+)$/.exec(lines[0]);
  if (!start) throw new Error("Embedded request with a malformed request line");
  const headers = [];
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon <= 0) throw new Error("Embedded request with a malformed header line");
    headers.push([line.slice(0, colon), line.slice(colon + 1).trim()]);
  }
  const declared = headers.find(([n]) => n.toLowerCase() === "content-length");
  const length = declared ? Number.parseInt(declared[1], 10) : 0;
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new Error("Embedded request with a bad Content-Length");
  }
  const body = bytes.slice(end + 4, end + 4 + length);
  if (body.length !== length) throw new Error("Embedded request with a truncated body");
  return new GatewayRequest({
    method: start[1], url: start[2], httpVersion: start[3], headers, body, requestingClient,
  });
}

/** The request of a JSON event (CJ-02, CJ-07). */
export function requestFromEvent(event) {
  const body = event["body-encoding"] === "base64"
    ? decodeBase64(event.body ?? "")
    : utf8Encoder.encode(event.body ?? "");
  return new GatewayRequest({
    method: event.method,
    url: event["request-uri"],
    httpVersion: event["http-version"],
    headers: (event.headers ?? []).map(([n, v]) => [String(n), String(v)]),
    body,
    requestingClient: event["requesting-client"] ?? null,
    messageId: event["message-id"],
  });
}

async function bodyBytes(body) {
  if (body === undefined || body === null) return new Uint8Array(0);
  if (typeof body === "string") return utf8Encoder.encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  if (typeof Blob !== "undefined" && body instanceof Blob) {
    return new Uint8Array(await body.arrayBuffer());
  }
  throw new TypeError("body must be a string, Uint8Array, ArrayBuffer, typed array or Blob");
}

function headerPairs(headers) {
  if (headers === undefined || headers === null) return [];
  if (typeof Headers !== "undefined" && headers instanceof Headers) return [...headers.entries()];
  if (Array.isArray(headers)) return headers;
  const pairs = [];
  for (const [name, value] of Object.entries(headers)) {
    for (const item of Array.isArray(value) ? value : [value]) pairs.push([name, item]);
  }
  return pairs;
}

/**
 * A handler's answer as {status, reason, headers (byte-string pairs), body (Uint8Array)}.
 * Accepts {status, reason?, headers?, body?} or a fetch Response. Throws on anything invalid.
 */
export async function normalizeReply(result, requestMethod = "GET") {
  if (typeof Response !== "undefined" && result instanceof Response) {
    result = {
      status: result.status,
      reason: result.statusText,
      headers: [...result.headers.entries()],
      body: new Uint8Array(await result.arrayBuffer()),
    };
  }
  if (result === null || typeof result !== "object") {
    throw new TypeError("The handler must return {status, headers, body} or a Response");
  }
  const status = result.status ?? 200;
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    throw new TypeError(`Invalid status ${status}: use an integer from 200 to 599`);
  }
  const reason = String(result.reason || REASONS[status] || "Unknown");
  if (/[\r\n\0]/.test(reason)) throw new TypeError("Invalid reason phrase");
  let body = await bodyBytes(result.body);
  const headers = [];
  for (const pair of headerPairs(result.headers)) {
    if (!Array.isArray(pair) || pair.length !== 2) throw new TypeError("Headers are [name, value]");
    const [name, value] = [String(pair[0]), toHeaderText(pair[1])];
    if (!TOKEN_CHARS.test(name)) throw new TypeError(`Invalid header name ${JSON.stringify(name)}`);
    if (/[\r\n\0]/.test(value)) throw new TypeError(`CR, LF or NUL in header ${name}`);
    if (!FRAMING.has(name.toLowerCase())) headers.push([name, value]);
  }
  if (typeof result.body === "string" && !headers.some(([n]) => n.toLowerCase() === "content-type")) {
    headers.push(["Content-Type", "text/plain; charset=utf-8"]);
  }
  let length = body.length;
  if (status === 204 || status === 304) {
    body = new Uint8Array(0);
    length = null;
  } else if (requestMethod.toUpperCase() === "HEAD") {
    body = new Uint8Array(0); // the length of the body a GET would get stays declared (RH-51)
  }
  return { status, reason, headers, body, length };
}

/** A normalized reply as a `message/http` envelope (RH-45, RH-49). */
export function encodeMessageHttp(reply) {
  let head = `HTTP/1.1 ${reply.status} ${toHeaderText(reply.reason)}\r\n`;
  for (const [name, value] of reply.headers) head += `${name}: ${value}\r\n`;
  if (reply.length !== null) head += `Content-Length: ${reply.length}\r\n`;
  return concatBytes(byteStringToBytes(head + "\r\n"), reply.body);
}

/** A normalized reply as a JSON reply object for `message-id` (CJ-04, CJ-07). */
export function encodeJsonReply(messageId, reply) {
  return {
    "message-id": messageId,
    status: reply.status,
    reason: toHeaderText(reply.reason),
    headers: reply.headers,
    body: encodeBase64(reply.body),
    "body-encoding": "base64",
  };
}

function internalError() {
  return {
    status: 500,
    reason: REASONS[500],
    headers: [["Content-Type", "text/plain; charset=utf-8"]],
    body: utf8Encoder.encode(HANDLER_FAILED),
    length: utf8Encoder.encode(HANDLER_FAILED).length,
  };
}

function randomToken() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function discard(response) {
  try {
    await response.arrayBuffer();
  } catch {
    // The body is of no interest; a failed read only means the connection went away.
  }
}

async function errorText(response) {
  try {
    return (await response.text()).trim().slice(0, 200);
  } catch {
    return "";
  }
}

// ---------------------------------------------------------------------------------------------

/**
 * Serves HTTP through a Reverse HTTP gateway.
 *
 * Options: gateway (Service URL, may be relative to the page), name (the label), token
 * (default: a random one kept for this object, so re-registering works), lease (seconds),
 * encoding ("message/http" or "json"), handler (async (GatewayRequest) => reply), pollers
 * (concurrent polling loops, default 1), accessToken (sent as "Authorization: Bearer" when
 * registering), backoff ({initial, max} in ms), stopTimeout (ms stop() waits for handlers).
 */
export class ReverseHttpServer extends EventTarget {
  constructor(options = {}) {
    super();
    const {
      gateway, name, token, lease, encoding = "message/http", handler, pollers = 1,
      accessToken = null, backoff = {}, stopTimeout = 5000, fetch: fetchFunction,
    } = options;
    if (!gateway) throw new TypeError("gateway (the Service URL) is required");
    if (!name) throw new TypeError("name (the label to register) is required");
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    if (!ENCODINGS.includes(encoding)) {
      throw new TypeError(`encoding must be one of ${ENCODINGS.join(", ")}`);
    }
    this.gateway = new URL(gateway, globalThis.location?.href).href;
    this.name = String(name);
    this.token = token ? String(token) : randomToken();
    this.lease = lease ?? null;
    this.encoding = encoding;
    this.handler = handler;
    this.pollers = Math.max(1, Math.floor(Number(pollers) || 1));
    this.accessToken = accessToken;
    this.backoff = { initial: 500, max: 30000, ...backoff };
    this.stopTimeout = stopTimeout;
    /** The public URL that reaches this server (rel="related"), after start(). */
    this.publicUrl = null;
    /** The private URL of the registration (Location), after start(). */
    this.privateUrl = null;
    this._fetch = fetchFunction ?? ((...args) => globalThis.fetch(...args));
    this._state = "idle";
    this._loops = [];
    this._registrations = 0;
  }

  /** True between start() and stop(). */
  get running() {
    return this._state === "running";
  }

  /** Register, then start the polling loops. Rejects with a GatewayError when refused. */
  async start() {
    if (this._state !== "idle") throw new Error("This server is already started");
    this._state = "running";
    this._wake = new AbortController(); // ends backoff sleeps when stop() begins
    this._abort = new AbortController(); // cancels requests still open when stop() gives up
    try {
      if (this.encoding === "json") {
        await this._register();
        for (let i = 0; i < this.pollers; i++) this._loops.push(this._jsonLoop(i));
      } else {
        // Each poller needs a Request URL of its own: one registration (201, then 204s) each.
        const firsts = [];
        for (let i = 0; i < this.pollers; i++) firsts.push(await this._register());
        firsts.forEach((first, i) => this._loops.push(this._messageLoop(i, first)));
      }
    } catch (error) {
      this._state = "idle";
      throw error;
    }
  }

  /**
   * Stop: delete the registration (waiting polls end with 410), let requests being handled
   * finish and send their replies (at most stopTimeout ms), then cancel what is left.
   */
  async stop() {
    if (this._state !== "running") return;
    this._state = "stopping";
    this._wake.abort();
    const loops = Promise.allSettled(this._loops);
    const registrations = this._registrations;
    await this._deleteRegistration();
    const timeout = new Promise((resolve) => setTimeout(resolve, this.stopTimeout, "timeout"));
    if ((await Promise.race([loops, timeout])) === "timeout") {
      this._abort.abort();
      await loops;
    }
    if (this._registrations !== registrations) await this._deleteRegistration(); // a late re-register
    this._loops = [];
    this._state = "idle";
    this._emit("stopped", {});
  }

  // -- registration ----------------------------------------------------------------------------

  async _register() {
    const form = new URLSearchParams({ name: this.name, token: this.token });
    if (this.lease !== null) form.set("lease", String(this.lease));
    const headers = {};
    if (this.accessToken) headers.Authorization = `Bearer ${this.accessToken}`;
    const response = await this._fetch(this.gateway, {
      method: "POST", body: form, headers, credentials: "omit", signal: this._abort.signal,
    });
    if (response.status !== 201 && response.status !== 204) {
      const text = await errorText(response);
      throw new GatewayError(`Registration refused: ${text || response.status}`, response.status);
    }
    await discard(response);
    const base = response.url || this.gateway;
    const links = parseLinkHeader(response.headers.get("Link"), base);
    if (!links.first) {
      throw new GatewayError(
        'Registration answer without Link rel="first" (cross-origin: does the gateway allow '
        + "this origin in CORS_ALLOWED_ORIGINS?)", response.status,
      );
    }
    const location = response.headers.get("Location");
    if (links.related) this.publicUrl = links.related;
    if (location) this.privateUrl = new URL(location, base).href;
    this._registrations += 1;
    this._emit("registered", {
      publicUrl: this.publicUrl, privateUrl: this.privateUrl, created: response.status === 201,
    });
    return links.first;
  }

  async _deleteRegistration() {
    if (!this.privateUrl) return;
    const timer = new AbortController();
    const timeout = setTimeout(() => timer.abort(), this.stopTimeout);
    try {
      const response = await this._fetch(this.privateUrl, {
        // keepalive: the DELETE outlives the page when stop() runs on pagehide.
        method: "DELETE", credentials: "omit", keepalive: true, signal: timer.signal,
      });
      await discard(response);
      if (response.status !== 204 && response.status !== 404) {
        throw new GatewayError(`Deleting the registration failed: ${response.status}`,
          response.status);
      }
    } catch (error) {
      this._error(error, null);
    } finally {
      clearTimeout(timeout);
    }
  }

  // -- message/http long-poll --------------------------------------------------------------------

  async _messageLoop(index, first) {
    let url = first;
    let failures = 0;
    while (this._state === "running") {
      let response;
      try {
        if (url === null) url = await this._register();
        response = await this._fetch(url, {
          headers: { Accept: "message/http" }, credentials: "omit", cache: "no-store",
          signal: this._abort.signal,
        });
      } catch (error) {
        if (this._state !== "running") break;
        this._error(error, index);
        await this._sleep(this._delay(failures++));
        continue;
      }
      const next = parseLinkHeader(response.headers.get("Link"), response.url || url).next;
      if (response.status === 200) {
        let bytes;
        try {
          bytes = new Uint8Array(await response.arrayBuffer());
        } catch (error) {
          // Lost on the way: a re-GET of the same URL delivers the request again (RH-29).
          if (this._state !== "running") break;
          this._error(error, index);
          await this._sleep(this._delay(failures++));
          continue;
        }
        failures = 0;
        const replyUrl = url;
        url = next ?? null;
        await this._serveMessage(bytes, response.headers.get("Requesting-Client"), replyUrl, index);
      } else if (response.status === 204) {
        await discard(response);
        failures = 0;
        url = next ?? url; // the gateway points back at the same URL (RH-22)
      } else if (response.status === 404 || response.status === 410) {
        await discard(response);
        if (this._state !== "running") break;
        // The registration expired or was deleted: register again (after a pause if repeated).
        if (failures > 0) await this._sleep(this._delay(failures));
        failures += 1;
        url = null;
      } else {
        const text = await errorText(response);
        if (this._state !== "running") break;
        this._error(new GatewayError(`Poll failed: ${text || response.status}`, response.status),
          index);
        await this._sleep(this._delay(failures++));
      }
    }
  }

  async _serveMessage(bytes, requestingClient, replyUrl, index) {
    let reply;
    try {
      reply = await this._handle(parseEmbeddedRequest(bytes, requestingClient), index);
    } catch (error) {
      this._error(error, index); // an envelope we cannot parse
      reply = internalError();
    }
    await this._postReply(replyUrl, encodeMessageHttp(reply), index);
  }

  async _postReply(url, envelope, index) {
    for (let attempt = 0; attempt < 4; attempt++) {
      let response;
      try {
        response = await this._fetch(url, {
          method: "POST", headers: { "Content-Type": "message/http" }, body: envelope,
          credentials: "omit", signal: this._abort.signal,
        });
      } catch (error) {
        if (this._abort.signal.aborted) return;
        this._error(error, index);
        await this._sleep(this._delay(attempt), true);
        continue;
      }
      if (response.status === 202) {
        await discard(response);
        return;
      }
      const text = await errorText(response);
      // 404: answered already, or too late; 400: the gateway refused the reply (the requestor
      // got a 502). Retrying would not help either.
      this._error(new GatewayError(`Reply refused: ${text || response.status}`, response.status),
        index);
      return;
    }
  }

  // -- JSON long-poll ----------------------------------------------------------------------------

  async _jsonLoop(index) {
    let pending = []; // [{messageId, reply}] not yet accepted by the gateway
    let failures = 0;
    let reregister = false;
    while (this._state === "running") {
      let response;
      try {
        if (reregister) {
          await this._register();
          reregister = false;
        }
        const init = {
          method: "POST", credentials: "omit", cache: "no-store", signal: this._abort.signal,
        };
        if (pending.length) {
          const replies = pending.map((p) => encodeJsonReply(p.messageId, p.reply));
          init.headers = { "Content-Type": "application/json" };
          init.body = JSON.stringify(replies.length === 1 ? replies[0] : replies); // CJ-08
        }
        response = await this._fetch(`${this.privateUrl}/json`, init);
      } catch (error) {
        if (this._state !== "running") break;
        this._error(error, index);
        await this._sleep(this._delay(failures++));
        continue;
      }
      if (response.status === 200) {
        pending = []; // the gateway routed them before holding the poll
        let event;
        try {
          event = await response.json();
        } catch (error) {
          if (this._state !== "running") break;
          this._error(error, index);
          await this._sleep(this._delay(failures++));
          continue;
        }
        failures = 0;
        if (event && typeof event["message-id"] === "string") { // {} is a timeout (CJ-03)
          let reply;
          try {
            reply = await this._handle(requestFromEvent(event), index);
          } catch (error) {
            this._error(error, index);
            reply = internalError();
          }
          pending = [{ messageId: event["message-id"], reply }];
        }
      } else if (response.status === 404 || response.status === 410) {
        await discard(response);
        // 410: the replies were routed before the deletion was noticed; 404: they were not
        // read, so they go out again on the new registration's first poll.
        if (response.status === 410) pending = [];
        if (this._state !== "running") break;
        if (failures > 0) await this._sleep(this._delay(failures));
        failures += 1;
        reregister = true;
      } else {
        const text = await errorText(response);
        if (response.status === 400 || response.status === 413) pending = []; // refused replies
        if (this._state !== "running") break;
        this._error(new GatewayError(`Poll failed: ${text || response.status}`, response.status),
          index);
        await this._sleep(this._delay(failures++));
      }
    }
    // Stopping with replies in hand: the next poll would take a new request we could not
    // serve, so post them as message/http to their Request URL, {private URL}/{message-id}.
    for (const { messageId, reply } of pending) {
      await this._postReply(`${this.privateUrl}/${messageId}`, encodeMessageHttp(reply), index);
    }
  }

  // -- shared ------------------------------------------------------------------------------------

  async _handle(request, index) {
    const started = performance.now();
    let reply;
    try {
      reply = await normalizeReply(await this.handler(request), request.method);
    } catch (error) {
      this._error(error, index);
      reply = internalError();
    }
    this._emit("request", {
      method: request.method, url: request.url, status: reply.status,
      duration: Math.round(performance.now() - started), poller: index,
      requestingClient: request.requestingClient,
    });
    return reply;
  }

  /** Exponential backoff with jitter: half the step fixed, half random. */
  _delay(failures) {
    const step = Math.min(this.backoff.max, this.backoff.initial * 2 ** Math.min(failures, 20));
    return step / 2 + Math.random() * (step / 2);
  }

  /** Sleep `ms`; ends early when stop() begins (unless `untilAbort`, for replies in flight). */
  _sleep(ms, untilAbort = false) {
    const signal = untilAbort ? this._abort.signal : this._wake.signal;
    return new Promise((resolve) => {
      if (signal.aborted) {
        resolve();
        return;
      }
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done);
    });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _error(error, poller) {
    this._emit("error", { error, poller });
  }
}
