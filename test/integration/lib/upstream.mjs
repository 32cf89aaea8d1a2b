// upstream.mjs - a TLS mock of the providers tollgate talks to (OpenAI chat
// completions, Anthropic messages, Gemini generateContent) that replays the
// recorded wire fixtures, cut into randomly sized pieces, and can be scripted
// to misbehave (reset, stall, flood, error status, slow first byte).
//
//   POST /v1/chat/completions                      OpenAI (Authorization: Bearer KEY)
//   GET  /v1/models                                OpenAI's model list (`modelsScript`:
//                                                  script options for it, e.g. "status=503")
//   POST /v1/messages                              Anthropic (x-api-key: KEY, anthropic-version)
//   POST /v1beta/models/MODEL:generateContent      Gemini (x-goog-api-key: KEY)
//   POST /v1beta/models/MODEL:streamGenerateContent?alt=sse
//
// The model (the body's `model`; for Gemini the percent-decoded MODEL of the
// path) picks the fixture and the script:
//
//   <provider>/<fixture basename>[?opt=value&opt=value...]
//
// e.g. `openai/chat_stream` replays openai/chat_stream.sse to a stream request,
// `openai/chat_completion_response` replays the .json to a non-stream one,
// `openai/error_429` answers 429 with that body. Gemini streams replay
// `<fixture>.wire_crlf.sse` when it exists (the byte-exact CRLF wire). A
// model without a slash gets the API's default fixtures (openai/chat_stream,
// openai/chat_completion_response; anthropic/messages_stream,
// anthropic/messages_response; gemini/stream_generate_content,
// gemini/generate_content_response). The header `x-mock-script` can carry
// the same options (it wins over the model's). See ../README.md for the list.
//
// Everything the mock sees is recorded (requests, sockets, TLS handshake
// failures) so tests can assert on what the gateway sent upstream.
import https from 'node:https';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { FIXTURES, TLS_DIR } from './paths.mjs';
import { splitEvents, isUsageOnlyChunk, eventData } from './sse.mjs';

/** mulberry32: a tiny seeded PRNG returning floats in [0, 1). */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const INT_OPTS = ['seed', 'min', 'max', 'delay', 'reset', 'close', 'stall', 'status', 'bytes', 'event', 'pausems', 'retryafter'];

/**
 * Parses script options from `a=1&b=2` text. Unknown options are an error, so
 * a typo in a test fails loudly instead of silently replaying the fixture.
 */
export function parseScript(text) {
  const script = {};
  if (!text) return script;
  for (const part of text.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    const val = eq < 0 ? '1' : part.slice(eq + 1);
    if (INT_OPTS.includes(key)) {
      if (!/^\d+$/.test(val)) throw new Error(`mock script: ${key} wants a non-negative integer, got "${val}"`);
      script[key] = Number(val);
    } else if (key === 'pause') {
      const p = Number(val);
      if (!(p >= 0 && p <= 1)) throw new Error(`mock script: pause wants a probability 0..1, got "${val}"`);
      script.pause = p;
    } else if (key === 'hang' || key === 'cl') {
      script[key] = val !== '0';
    } else if (key === 'usage') {
      if (val !== 'always' && val !== 'asked') throw new Error(`mock script: usage=always|asked, got "${val}"`);
      script.usage = val;
    } else {
      throw new Error(`mock script: unknown option "${key}"`);
    }
  }
  return script;
}

/** Splits `name?opts` into the fixture name and the parsed script. */
export function parseModel(model) {
  const q = model.indexOf('?');
  return q < 0
    ? { name: model, script: {} }
    : { name: model.slice(0, q), script: parseScript(model.slice(q + 1)) };
}

function openaiError(message, type, code, param = null) {
  return Buffer.from(JSON.stringify({ error: { message, type, param, code } }));
}

function anthropicError(type, message, requestId) {
  return Buffer.from(JSON.stringify({ type: 'error', error: { type, message }, request_id: requestId }));
}

function geminiError(code, status, message) {
  return Buffer.from(JSON.stringify({ error: { code, message, status } }, null, 2));
}

/** The fixture of a model without a slash, per API: [stream, non-stream]. */
const DEFAULT_FIXTURE = {
  openai: ['openai/chat_stream', 'openai/chat_completion_response'],
  anthropic: ['anthropic/messages_stream', 'anthropic/messages_response'],
  gemini: ['gemini/stream_generate_content', 'gemini/generate_content_response'],
};

/**
 * Which API a request line speaks: {api: 'openai'} for POST /v1/chat/completions,
 * {api: 'anthropic'} for POST /v1/messages, {api: 'gemini', model (still
 * percent-encoded), method, stream, sse} for POST
 * /v1beta/models/MODEL:generateContent or :streamGenerateContent[?alt=sse];
 * null for anything else.
 */
export function routeOf(method, rawUrl) {
  if (method !== 'POST') return null;
  if (rawUrl === '/v1/chat/completions') return { api: 'openai' };
  let u;
  try {
    u = new URL(rawUrl, 'https://localhost');
  } catch {
    return null;
  }
  if (u.pathname === '/v1/messages') return { api: 'anthropic' };
  const m = /^\/v1beta\/models\/(.+):(generateContent|streamGenerateContent)$/.exec(u.pathname);
  if (!m) return null;
  const stream = m[2] === 'streamGenerateContent';
  return { api: 'gemini', model: m[1], method: m[2], stream, sse: stream && u.searchParams.get('alt') === 'sse' };
}

// Content events of the synthetic flood stream, one per letter, each carrying
// `size` copies of that letter.
function floodTemplates(size) {
  const out = [];
  for (let i = 0; i < 26; i++) {
    const content = String.fromCharCode(97 + i).repeat(size);
    out.push(Buffer.from(
      `data: {"id":"chatcmpl-flood","object":"chat.completion.chunk","created":1700000000,` +
      `"model":"flood","choices":[{"index":0,"delta":{"content":"${content}"},"finish_reason":null}],` +
      `"usage":null}\n\n`));
  }
  return out;
}

/**
 * The synthetic flood stream as a plan: its framing events and how many
 * content events it has. Exported so a test can compute the exact bytes a
 * flood of `bytes` produces without trusting the mock's own bookkeeping.
 */
export function floodPlan(bytes, eventSize = 1000) {
  const templates = floodTemplates(eventSize);
  const count = Math.max(1, Math.ceil(bytes / templates[0].length));
  const head = Buffer.from(
    'data: {"id":"chatcmpl-flood","object":"chat.completion.chunk","created":1700000000,' +
    '"model":"flood","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],' +
    '"usage":null}\n\n');
  const finish = Buffer.from(
    'data: {"id":"chatcmpl-flood","object":"chat.completion.chunk","created":1700000000,' +
    '"model":"flood","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n');
  const usage = Buffer.from(
    'data: {"id":"chatcmpl-flood","object":"chat.completion.chunk","created":1700000000,' +
    `"model":"flood","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":${count},` +
    `"total_tokens":${count + 7}}}\n\n`);
  const done = Buffer.from('data: [DONE]\n\n');
  const contentBytes = count * templates[0].length; // all templates have one length
  return { templates, count, head, finish, usage, done, contentBytes, totalBytes: head.length + contentBytes + finish.length + usage.length + done.length };
}

export class MockUpstream extends EventEmitter {
  /**
   * @param {object} o
   * @param {string} [o.cert] which certificate of test/data/tls to serve: server | wronghost | selfsigned
   * @param {string} [o.apiKey] the key the gateway must send as `Authorization: Bearer ...`
   * @param {number} [o.seed] base seed; request n uses seed+n unless the script sets one
   */
  constructor({ cert = 'server', apiKey = 'test-upstream-key', seed = 1, fixtures = FIXTURES } = {}) {
    super();
    this.setMaxListeners(0);
    this.apiKey = apiKey;
    this.seed = seed;
    this.fixtures = fixtures;
    /** Every request, in arrival order (see handle() for the fields). */
    this.requests = [];
    /** Every TLS connection: {id, openedAt, closedAt, remotePort, requests}. */
    this.sockets = [];
    /** TLS handshakes that failed: {at, code, message}. */
    this.tlsErrors = [];
    /** Raw TCP connections accepted (handshake or not). */
    this.tcpConnections = 0;
    this._raw = new Set();
    this._sockRec = new WeakMap();
    this.server = https.createServer({
      cert: fs.readFileSync(path.join(TLS_DIR, `${cert}.crt`)),
      key: fs.readFileSync(path.join(TLS_DIR, `${cert}.key`)),
      keepAlive: true,
      keepAliveTimeout: 30000,
      requestTimeout: 0,
      headersTimeout: 10000,
    });
    this.server.on('connection', (raw) => {
      this.tcpConnections += 1;
      this._raw.add(raw);
      raw.on('close', () => this._raw.delete(raw));
    });
    this.server.on('secureConnection', (s) => {
      const rec = { id: this.sockets.length + 1, openedAt: performance.now(), closedAt: null, remotePort: s.remotePort, requests: 0 };
      this.sockets.push(rec);
      this._sockRec.set(s, rec);
      s.setNoDelay(true);
      s.on('close', () => {
        rec.closedAt = performance.now();
        this.emit('change');
      });
      this.emit('change');
    });
    this.server.on('tlsClientError', (err) => {
      this.tlsErrors.push({ at: performance.now(), code: err.code, message: err.message });
      this.emit('change');
    });
    this.server.on('request', (req, res) => {
      this.handle(req, res).catch((err) => {
        // A bug in the mock must not look like a gateway failure: make it loud.
        process.stderr.write(`mock upstream: handler error: ${err.stack}\n`);
        res.destroy(err);
      });
    });
  }

  /** Starts listening on 127.0.0.1 and a free port. */
  async listen() {
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    return this;
  }

  /** The port it listens on. */
  get port() {
    return this.server.address().port;
  }

  /** The base URL to put in a provider's base_url (hostname localhost: the certificate's name). */
  get baseUrl() {
    return `https://localhost:${this.port}/v1`;
  }

  /** The socket record of a request (see sockets). */
  socketOf(req) {
    return this.sockets.find((s) => s.id === req.socketId);
  }

  /**
   * Resolves with pred()'s first truthy value, re-checked whenever the mock
   * records something; rejects after timeoutMs with `what` in the message.
   */
  waitFor(pred, timeoutMs, what = 'condition') {
    return new Promise((resolve, reject) => {
      const check = () => {
        const v = pred();
        if (v) {
          cleanup();
          resolve(v);
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`mock upstream: timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off('change', check);
      };
      this.on('change', check);
      check();
    });
  }

  /** Waits for the first request whose x-request-id header is id. */
  waitForRequestId(id, timeoutMs = 5000) {
    return this.waitFor(() => this.requests.find((r) => r.headers['x-request-id'] === id), timeoutMs, `an upstream request with x-request-id ${id}`);
  }

  /** Stops listening and destroys every connection (stalled ones included). */
  async close() {
    const closed = new Promise((r) => this.server.close(r));
    for (const raw of this._raw) raw.destroy();
    await closed;
  }

  async handle(req, res) {
    const sock = this._sockRec.get(req.socket);
    if (sock) sock.requests += 1;
    const parts = [];
    for await (const c of req) parts.push(c);
    const rawBody = Buffer.concat(parts);
    const rec = {
      seq: this.requests.length + 1,
      method: req.method,
      path: req.url,
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      rawBody,
      body: null,
      socketId: sock ? sock.id : null,
      receivedAt: performance.now(),
      fixture: null,
      script: {},
      seed: null,
      status: null,
      firstByteAt: null,
      bytesSent: 0,
      writeStalls: 0,
      stalledMs: 0,
      maxStallMs: 0,
      stallingSince: null,
      sent: null,
      outcome: 'pending',
      clientClosedAt: null,
    };
    try {
      rec.body = JSON.parse(rawBody.toString('utf8'));
    } catch {
      rec.body = null;
    }
    this.requests.push(rec);
    res.on('close', () => {
      if (!res.writableFinished && rec.clientClosedAt === null) {
        rec.clientClosedAt = performance.now();
        if (rec.outcome === 'pending' || rec.outcome === 'streaming') rec.outcome = 'client-closed';
      }
      this.emit('change');
    });
    this.emit('change');

    const requestId = `req_mock_${rec.seq}`;
    const route = routeOf(req.method, req.url);
    rec.api = route?.api ?? null;
    const api = route?.api ?? 'openai';
    const jsonType = api === 'gemini' ? 'application/json; charset=UTF-8' : 'application/json';
    const idHeaders = api === 'anthropic' ? { 'request-id': requestId, 'x-request-id': requestId } : { 'x-request-id': requestId };
    // Gemini's streaming method without alt=sse answers a JSON array, errors included.
    const wrapArray = api === 'gemini' && route.stream && !route.sse;
    const wrap = (body) => (wrapArray ? Buffer.concat([Buffer.from('[\n'), body, Buffer.from('\n]')]) : body);
    const fail = (status, body) => this.respond(rec, res, status, { 'content-type': jsonType, ...idHeaders }, wrap(body), {});
    const notFound = (name) => fail(404, api === 'anthropic'
      ? anthropicError('not_found_error', `model: ${name}`, requestId)
      : api === 'gemini'
        ? geminiError(404, 'NOT_FOUND', `models/${name} is not found for API version v1beta, or is not supported for ${route.method}.`)
        : openaiError(`The model \`${name}\` does not exist or you do not have access to it.`, 'invalid_request_error', 'model_not_found'));
    const badRequest = (message, param = null) => fail(400, api === 'anthropic'
      ? anthropicError('invalid_request_error', message, requestId)
      : api === 'gemini'
        ? geminiError(400, 'INVALID_ARGUMENT', message)
        : openaiError(message, 'invalid_request_error', null, param));

    if (!route && req.method === 'GET' && req.url === '/v1/models') {
      // OpenAI's model list (a health check's cheap request)
      if (req.headers.authorization !== `Bearer ${this.apiKey}`) {
        return fail(401, fs.readFileSync(path.join(this.fixtures, 'openai', 'error_401.json')));
      }
      rec.fixture = 'openai/models_list_response.json';
      const script = parseScript(req.headers['x-mock-script']);
      if (this.modelsScript) Object.assign(script, parseScript(this.modelsScript));
      rec.script = script;
      if (script.hang) return;
      if (script.delay) await sleep(script.delay);
      return this.respond(rec, res, script.status ?? 200, { 'content-type': jsonType, ...idHeaders },
        fs.readFileSync(path.join(this.fixtures, 'openai', 'models_list_response.json')), script);
    }
    if (!route) {
      return fail(404, openaiError(`Invalid URL (${req.method} ${req.url})`, 'invalid_request_error', null));
    }
    if (api === 'openai' && req.headers.authorization !== `Bearer ${this.apiKey}`) {
      return fail(401, fs.readFileSync(path.join(this.fixtures, 'openai', 'error_401.json')));
    }
    if (api === 'anthropic' && (req.headers['x-api-key'] !== this.apiKey || !req.headers['anthropic-version'])) {
      return fail(401, fs.readFileSync(path.join(this.fixtures, 'anthropic', 'error_401_authentication_error.json')));
    }
    if (api === 'gemini' && req.headers['x-goog-api-key'] !== this.apiKey) {
      return fail(400, fs.readFileSync(path.join(this.fixtures, 'gemini', 'error_400_api_key_invalid.json')));
    }
    if (rec.body === null || typeof rec.body !== 'object' || Array.isArray(rec.body)) {
      return badRequest('We could not parse the JSON body of your request.');
    }
    let model;
    if (api === 'gemini') {
      try {
        model = decodeURIComponent(route.model); // names with '/' or '?' arrive percent-encoded
      } catch {
        return badRequest(`bad model in the path: ${route.model}`);
      }
    } else {
      model = rec.body.model;
      if (typeof model !== 'string') return badRequest('model: field required', 'model');
    }
    rec.model = model;

    let name;
    try {
      const m = parseModel(model);
      name = m.name;
      rec.script = { ...m.script, ...parseScript(req.headers['x-mock-script']) };
    } catch (err) {
      return badRequest(err.message, 'model');
    }
    const script = rec.script;
    rec.seed = script.seed ?? this.seed + rec.seq;
    const stream = api === 'gemini' ? route.stream : rec.body.stream === true;
    rec.stream = stream;
    const askedUsage = rec.body.stream_options?.include_usage === true;

    if (script.hang) return; // never answer; the socket stays open until someone closes it
    if (script.delay) await sleep(script.delay);
    if (rec.clientClosedAt !== null) return;

    if (name === 'synthetic/flood') {
      if (api !== 'openai') return badRequest('synthetic/flood is OpenAI-only');
      if (!stream) return badRequest('synthetic/flood is stream-only', 'stream');
      rec.fixture = name;
      return this.flood(rec, res, requestId, askedUsage);
    }

    if (!name.includes('/')) name = DEFAULT_FIXTURE[api][stream ? 0 : 1];
    if (!/^[a-z0-9_-]+\/[A-Za-z0-9_.-]+$/.test(name) || name.includes('..')) return notFound(name);
    const base = path.join(this.fixtures, name);
    const errorStatus = /^error_(\d{3})/.exec(path.basename(name));
    if (errorStatus) {
      if (!fs.existsSync(`${base}.json`)) return notFound(name);
      rec.fixture = `${name}.json`;
      return this.respond(rec, res, script.status ?? Number(errorStatus[1]),
        { 'content-type': jsonType, ...idHeaders }, wrap(fs.readFileSync(`${base}.json`)), script);
    }
    let file = stream ? `${base}.sse` : `${base}.json`;
    // Gemini's wire uses CRLF between events: replay the byte-exact recording when there is one.
    if (api === 'gemini' && stream && fs.existsSync(`${base}.wire_crlf.sse`)) file = `${base}.wire_crlf.sse`;
    if (!fs.existsSync(file)) return notFound(name);
    rec.fixture = path.relative(this.fixtures, file);
    let body = fs.readFileSync(file);
    if (api === 'openai' && stream && !askedUsage && script.usage !== 'always') {
      // Like OpenAI: without stream_options.include_usage there is no usage chunk.
      const { events, rest } = splitEvents(body);
      body = Buffer.concat([...events.filter((ev) => !isUsageOnlyChunk(ev)), rest]);
    }
    let sse = stream;
    if (wrapArray) {
      // streamGenerateContent without alt=sse: the chunks as one JSON array
      const { events } = splitEvents(body);
      body = Buffer.from(`[${events.map((ev) => eventData(ev)).join(',\r\n')}]`);
      sse = false;
    }
    const headers = sse
      ? { 'content-type': api === 'gemini' ? 'text/event-stream' : 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', ...idHeaders }
      : { 'content-type': jsonType, ...idHeaders };
    return this.respond(rec, res, script.status ?? 200, headers, body, script);
  }

  // Writes one buffer, waiting for 'drain' when the socket pushes back and
  // accounting the wait. Returns false when the connection went away.
  async write(rec, res, buf) {
    if (res.destroyed) return false;
    if (rec.firstByteAt === null) rec.firstByteAt = performance.now();
    const ok = res.write(buf);
    rec.bytesSent += buf.length;
    if (ok) return true;
    rec.writeStalls += 1;
    const t0 = performance.now();
    rec.stallingSince = t0;
    const alive = await new Promise((resolve) => {
      const onDrain = () => { done(); resolve(true); };
      const onClose = () => { done(); resolve(false); };
      const done = () => { res.off('drain', onDrain); res.off('close', onClose); };
      res.on('drain', onDrain);
      res.on('close', onClose);
    });
    const waited = performance.now() - t0;
    rec.stallingSince = null;
    rec.stalledMs += waited;
    if (waited > rec.maxStallMs) rec.maxStallMs = waited;
    return alive;
  }

  // Sends status + headers, then body in random pieces (sizes min..max, default
  // 1..64, a short random pause after some), applying reset/close/stall.
  async respond(rec, res, status, headers, body, script) {
    rec.status = status;
    rec.sent = body;
    rec.outcome = 'streaming';
    if (script.cl) headers['content-length'] = String(body.length);
    if (script.retryafter !== undefined) headers['retry-after'] = String(script.retryafter);
    res.writeHead(status, headers);
    res.flushHeaders();
    const rng = seededRandom(rec.seed ?? this.seed);
    const min = Math.max(1, script.min ?? 1);
    const max = Math.max(min, script.max ?? 64);
    const pause = script.pause ?? 0.05;
    const pauseMs = script.pausems ?? 5;
    const cut = script.reset ?? script.close ?? script.stall;
    const limit = cut === undefined ? body.length : Math.min(cut, body.length);
    let off = 0;
    while (off < limit) {
      const n = Math.min(limit - off, min + Math.floor(rng() * (max - min + 1)));
      if (!(await this.write(rec, res, body.subarray(off, off + n)))) return;
      off += n;
      if (rng() < pause) await sleep(1 + Math.floor(rng() * pauseMs));
    }
    await this.finish(rec, res, script);
  }

  // What happens after the last byte: the scripted fault, or a clean end.
  async finish(rec, res, script) {
    if (script.stall !== undefined) {
      rec.outcome = 'stalled';
      this.emit('change');
      return;
    }
    if (script.reset !== undefined || script.close !== undefined) {
      // Give the peer time to read what was sent: a RST can discard unread data.
      await sleep(100);
      const tls = res.socket;
      if (tls && script.reset !== undefined && tls._parent && typeof tls._parent.resetAndDestroy === 'function') {
        tls._parent.resetAndDestroy(); // TCP RST under the TLS session
        rec.outcome = 'reset';
      } else if (tls) {
        tls.destroy(); // FIN without TLS close_notify or chunked terminator
        rec.outcome = 'closed';
      }
      this.emit('change');
      return;
    }
    rec.outcome = 'complete'; // every byte handed to the socket
    this.emit('change');
    await new Promise((r) => res.end(r));
  }

  // The synthetic stream: `bytes` of content events (each `event` letters),
  // written in ~64 KiB blocks as fast as the connection takes them.
  async flood(rec, res, requestId, askedUsage) {
    const script = rec.script;
    const plan = floodPlan(script.bytes ?? 200e6, script.event ?? 1000);
    const sendUsage = askedUsage || script.usage === 'always';
    const all = crypto.createHash('sha256');
    const withoutUsage = crypto.createHash('sha256');
    let withoutUsageBytes = 0;
    rec.flood = { count: plan.count, plannedBytes: plan.totalBytes - (sendUsage ? 0 : plan.usage.length), sha256: null, withoutUsageSha256: null, withoutUsageBytes: null };
    rec.status = 200;
    rec.outcome = 'streaming';
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-request-id': requestId });
    res.flushHeaders();
    const send = async (buf, isUsage = false) => {
      all.update(buf);
      if (!isUsage) {
        withoutUsage.update(buf);
        withoutUsageBytes += buf.length;
      }
      return this.write(rec, res, buf);
    };
    if (!(await send(plan.head))) return;
    const block = [];
    let blockLen = 0;
    for (let i = 0; i < plan.count; i++) {
      const t = plan.templates[i % 26];
      block.push(t);
      blockLen += t.length;
      if (blockLen >= 65536 || i === plan.count - 1) {
        if (!(await send(Buffer.concat(block, blockLen)))) return;
        block.length = 0;
        blockLen = 0;
      }
    }
    if (!(await send(plan.finish))) return;
    if (sendUsage && !(await send(plan.usage, true))) return;
    if (!(await send(plan.done))) return;
    rec.flood.sha256 = all.digest('hex');
    rec.flood.withoutUsageSha256 = withoutUsage.digest('hex');
    rec.flood.withoutUsageBytes = withoutUsageBytes;
    await this.finish(rec, res, {});
  }
}

/** Starts a mock upstream (see MockUpstream) listening on 127.0.0.1. */
export async function startUpstream(opts) {
  return new MockUpstream(opts).listen();
}

// Run by itself: `node lib/upstream.mjs [port] [cert]` serves until killed.
if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const port = Number(process.argv[2] ?? 0);
  const u = new MockUpstream({ cert: process.argv[3] ?? 'server' });
  u.server.listen(port, '127.0.0.1', () => {
    process.stdout.write(`mock upstream listening on https://localhost:${u.port}/v1 (fixtures ${u.fixtures})\n`);
  });
  u.on('change', () => {
    const r = u.requests[u.requests.length - 1];
    if (r && r.outcome !== r._logged) {
      r._logged = r.outcome;
      process.stdout.write(`#${r.seq} ${r.method} ${r.path} api=${r.api} model=${r.model ?? r.body?.model} fixture=${r.fixture} status=${r.status} outcome=${r.outcome} sent=${r.bytesSent}\n`);
    }
  });
}
