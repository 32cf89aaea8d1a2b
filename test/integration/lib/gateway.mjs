// gateway.mjs - start tollgate under test with a temp config, watch its logs,
// signal and stop it; and a raw HTTP/1.1 client over node:net for the tests
// that care about bytes on the wire (pipelining, chunked bodies,
// 100-continue, slow writers, streaming responses).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { REPO, TLS_DIR, TOLLGATE_BIN } from './paths.mjs';

export { REPO, TLS_DIR, TOLLGATE_BIN };

/** The client keys of the base config. */
export const KEY = 'tg-test-key-0123456789abcdef';
export const LIMITED_KEY = 'tg-limited-key-0123456789abcdef';
/** The key tollgate must present upstream (and the mock upstream demands). */
export const UPSTREAM_KEY = 'test-upstream-key';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * POSTs body (a string) to gw's path over node:http, on a fresh connection
 * unless an agent is given; resolves {status, text} once the response has
 * ended (bounded by timeoutMs).
 */
export function postText(gw, urlPath, headers, body, { agent = false, timeoutMs = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port: gw.port, method: 'POST', path: urlPath, agent,
      headers: { ...headers, 'content-length': Buffer.byteLength(body) },
      timeout: timeoutMs,
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, text }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** An operational log line: <ISO time> <level> ... */
export const OP_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn |info |debug) /;

/* ------------------------------------------------------------------ config */

const PLAIN = /^[A-Za-z_][A-Za-z0-9_./-]*$/;
const SIZE_OR_DURATION = /^\d+(\.\d+)?(ns|us|ms|s|m|h|B|KiB|MiB|GiB|KB|MB|GB)$/;
const YAML11_SPECIAL = /^(true|false|yes|no|on|off|null|y|n|~)$/i;

function yamlScalar(v) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'boolean' || typeof v === 'number') return String(v);
  const s = String(v);
  if ((PLAIN.test(s) && !YAML11_SPECIAL.test(s)) || SIZE_OR_DURATION.test(s)) return s;
  return JSON.stringify(s); // a JSON string is a valid YAML double-quoted scalar
}

const isScalar = (v) => v === null || typeof v !== 'object';

function yamlLines(v, indent) {
  const pad = ' '.repeat(indent);
  const out = [];
  if (Array.isArray(v)) {
    for (const item of v) {
      if (isScalar(item)) {
        out.push(`${pad}- ${yamlScalar(item)}`);
      } else {
        const inner = yamlLines(item, indent + 2);
        out.push(`${pad}- ${inner[0].slice(indent + 2)}`, ...inner.slice(1));
      }
    }
    return out;
  }
  for (const [k, val] of Object.entries(v)) {
    if (val === undefined) continue;
    if (isScalar(val)) {
      out.push(`${pad}${k}: ${yamlScalar(val)}`);
    } else if (Array.isArray(val) && (val.length === 0 || val.every(isScalar))) {
      out.push(`${pad}${k}: [${val.map(yamlScalar).join(', ')}]`);
    } else if (!Array.isArray(val) && Object.keys(val).length === 0) {
      out.push(`${pad}${k}: {}`);
    } else {
      out.push(`${pad}${k}:`, ...yamlLines(val, indent + 2));
    }
  }
  return out;
}

/** Block-style YAML for a plain object (strings quoted only when they must be). */
export function toYaml(obj) {
  return `${yamlLines(obj, 0).join('\n')}\n`;
}

/**
 * The contract's reference config: provider `up` (the TLS mock upstream at
 * upstreamUrl), provider `mock` (built in), models fx-chat, fx/* and mock-1,
 * keys `test` (everything) and `limited` (mock-1 only). `patch(cfg)` may edit
 * the object before it is returned.
 */
export function baseConfig(upstreamUrl, patch) {
  const cfg = {
    listen: '127.0.0.1:0',
    limits: { max_body_bytes: '1MiB', max_header_bytes: '16KiB', max_headers: 100 },
    timeouts: { header: '2s', body: '2s', idle: '5s', drain: '10s' },
    providers: [
      {
        name: 'up',
        type: 'openai_compatible',
        base_url: upstreamUrl,
        api_key: UPSTREAM_KEY,
        ca_file: path.join(TLS_DIR, 'ca.crt'),
        timeouts: { connect: '2s', tls: '2s', first_byte: '5s', idle: '5s', total: '30s' },
      },
      { name: 'mock', type: 'mock' },
    ],
    models: [
      { name: 'fx-chat', provider: 'up', model: 'gpt-4o-mini' },
      { name: 'fx/*', provider: 'up' },
      { name: 'mock-1', provider: 'mock' },
    ],
    keys: [
      { key: KEY, alias: 'test' },
      { key: LIMITED_KEY, alias: 'limited', models: ['mock-1'] },
    ],
  };
  if (patch) patch(cfg);
  return cfg;
}

/* ------------------------------------------------------------- the daemon */

const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

function binaryProblem() {
  try {
    fs.accessSync(TOLLGATE_BIN, fs.constants.X_OK);
    return null;
  } catch {
    return `tollgate binary not found or not executable at ${TOLLGATE_BIN} ` +
      '(build it with cmake into build/, or set TOLLGATE_BIN)';
  }
}

/** Runs `tollgate ARGS...` to completion: {code, signal, stdout, stderr}. */
/**
 * The environment tollgate runs with: this process's, without proxy
 * settings (a CI machine's https_proxy would send the mock upstream's
 * calls through it; tests that want one pass it in env).
 */
function childEnv(env) {
  const out = { ...process.env };
  for (const k of ['https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY', 'no_proxy', 'NO_PROXY', 'all_proxy', 'ALL_PROXY']) delete out[k];
  return { ...out, ...env };
}

export async function runTollgate(args, { timeoutMs = 10000, env = {} } = {}) {
  const problem = binaryProblem();
  if (problem) throw new Error(problem);
  // its own working directory: a daemon it starts keeps its spool there
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-run-'));
  const child = spawn(TOLLGATE_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(env), cwd });
  live.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const [code, signal] = await new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c, s) => resolve([c, s]));
  });
  clearTimeout(timer);
  live.delete(child);
  fs.rmSync(cwd, { recursive: true, force: true });
  return { code, signal, stdout, stderr };
}

export class Gateway extends EventEmitter {
  constructor() {
    super();
    this.setMaxListeners(0);
    /** The child process. */
    this.proc = null;
    /** The port parsed from `listening on 127.0.0.1:PORT`. */
    this.port = null;
    /** Every stdout line parsed as JSON (the access log). */
    this.accessLog = [];
    /** stdout lines that were neither JSON objects nor operational log lines. */
    this.stdoutGarbage = [];
    /** operational log lines that came on stdout (also in stderrLines). */
    this.stdoutOpLines = [];
    /** stderr, as lines (operational log). */
    this.stderrLines = [];
    /** {code, signal} once the process has exited, else null. */
    this.exit = null;
    /** performance.now() at exit. */
    this.exitAt = null;
    this.dir = null;
    this.configPath = null;
  }

  /** http://127.0.0.1:PORT + p */
  url(p = '') {
    return `http://127.0.0.1:${this.port}${p}`;
  }

  get pid() {
    return this.proc.pid;
  }

  /** All stderr text so far. */
  get stderr() {
    return this.stderrLines.join('\n');
  }

  /** Writes the config file (an object, rendered as YAML, or raw YAML text). */
  writeConfig(config) {
    // one loop unless a test asks for workers (the daemon's default is one
    // per core): counts of statements, mock fault sequences and lease
    // slices are per loop
    const cfg = typeof config === 'string' || 'workers' in config ? config : { workers: 1, ...config };
    fs.writeFileSync(this.configPath, typeof cfg === 'string' ? cfg : toYaml(cfg));
  }

  /** Sends a signal to the daemon. */
  signal(sig) {
    if (this.exit) throw new Error(`tollgate already exited (${JSON.stringify(this.exit)}); cannot send ${sig}`);
    this.proc.kill(sig);
  }

  /** Resident set size of the daemon in KiB, from /proc/<pid>/status. */
  rssKiB() {
    const status = fs.readFileSync(`/proc/${this.pid}/status`, 'utf8');
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
    if (!m) throw new Error(`no VmRSS in /proc/${this.pid}/status`);
    return Number(m[1]);
  }

  // Waits for an event-driven condition: pred() is re-checked on `event`.
  _waitOn(event, pred, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const v = pred();
        if (v) {
          cleanup();
          resolve(v);
        } else if (this.exit && event !== 'exit') {
          cleanup();
          reject(new Error(`tollgate exited (${JSON.stringify(this.exit)}) while waiting for ${what}; stderr:\n${this.stderr.slice(-2000)}`));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; stderr tail:\n${this.stderr.slice(-2000)}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off(event, check);
        this.off('exit', check);
      };
      this.on(event, check);
      this.on('exit', check);
      check();
    });
  }

  /** Resolves with the first access-log entry satisfying pred. */
  waitForAccessLog(pred, timeoutMs = 5000, what = 'an access log line') {
    return this._waitOn('access', () => this.accessLog.find(pred), timeoutMs, what);
  }

  /** The access-log entry of one request id. */
  accessLogFor(requestId, timeoutMs = 5000) {
    return this.waitForAccessLog((e) => e.request_id === requestId, timeoutMs, `the access log line of request ${requestId}`);
  }

  /** Resolves with the first stderr line from index `from` on that matches re. */
  waitForStderr(re, timeoutMs = 5000, from = 0) {
    return this._waitOn('stderr', () => this.stderrLines.slice(from).find((l) => re.test(l)), timeoutMs, `a stderr line matching ${re}`);
  }

  /** stderr lines where ASan, LSan or UBSan reported a problem. */
  sanitizerReports() {
    return this.stderrLines.filter((l) => /ERROR: (Address|Leak|Memory|Thread)Sanitizer|runtime error:|SUMMARY: \w+Sanitizer/.test(l));
  }

  /** Resolves with {code, signal} when the process exits; rejects after timeoutMs. */
  waitExit(timeoutMs = 5000) {
    return this._waitOn('exit', () => this.exit, timeoutMs, 'tollgate to exit');
  }

  /**
   * Stops the daemon: SIGTERM, then SIGKILL after graceMs. Always resolves
   * (meant for `after` hooks) with the exit status; removes the temp dir.
   */
  async stop(graceMs = 3000) {
    if (this.proc && !this.exit) {
      this.proc.kill('SIGTERM');
      try {
        await this.waitExit(graceMs);
      } catch {
        this.proc.kill('SIGKILL');
        await this.waitExit(5000).catch(() => {});
      }
    }
    if (this.dir) {
      fs.rmSync(this.dir, { recursive: true, force: true });
      this.dir = null;
    }
    return this.exit;
  }
}

/**
 * Starts tollgate with `config` (object -> YAML, or raw YAML text) in a temp
 * dir and resolves once it logged `listening on 127.0.0.1:PORT`. Rejects with
 * the reason (no binary, early exit with its stderr, timeout) otherwise.
 */
export async function startGateway(config, { env = {}, args = [], readyTimeoutMs = 15000 } = {}) {
  const problem = binaryProblem();
  if (problem) throw new Error(problem);
  const gw = new Gateway();
  gw.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-it-'));
  gw.configPath = path.join(gw.dir, 'tollgate.yaml');
  gw.writeConfig(config);
  const child = spawn(TOLLGATE_BIN, ['--config', gw.configPath, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: childEnv(env),
    cwd: gw.dir,
  });
  gw.proc = child;
  live.add(child);

  const lineReader = (onLine) => {
    let pending = '';
    return (data) => {
      pending += data;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        onLine(pending.slice(0, nl).replace(/\r$/, ''));
        pending = pending.slice(nl + 1);
      }
    };
  };
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  // operational lines (log.file, stdout by default) and whatever the
  // process writes to stderr (sanitizers, startup errors) are both
  // "stderr lines" here; access-log lines (log.access_file, stdout by
  // default) are JSON objects; anything else on stdout is garbage
  const opLine = (line) => {
    gw.stderrLines.push(line);
    if (process.env.TG_IT_VERBOSE) process.stderr.write(`[tollgate ${child.pid}] ${line}\n`);
    gw.emit('stderr', line);
  };
  child.stdout.on('data', lineReader((line) => {
    if (line === '') return;
    if (OP_LINE.test(line)) {
      gw.stdoutOpLines.push(line);
      opLine(line);
      return;
    }
    try {
      const v = JSON.parse(line);
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
      gw.accessLog.push(v);
      gw.emit('access', v);
    } catch {
      gw.stdoutGarbage.push(line);
    }
  }));
  child.stderr.on('data', lineReader(opLine));
  child.on('exit', (code, signal) => {
    gw.exit = { code, signal };
    gw.exitAt = performance.now();
    live.delete(child);
    gw.emit('exit');
  });
  const spawned = new Promise((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  try {
    await spawned;
    const line = await gw.waitForStderr(/listening on 127\.0\.0\.1:(\d+)/, readyTimeoutMs);
    gw.port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(line)[1]);
  } catch (err) {
    await gw.stop(500);
    throw new Error(`tollgate did not start: ${err.message}`);
  }
  return gw;
}

/* ----------------------------------------------------------- raw HTTP/1.1 */

/**
 * Serialises one HTTP/1.1 request. body: string | Buffer | object (JSON).
 * chunks: array of strings/Buffers sent with Transfer-Encoding: chunked.
 * Content-Length is added for a body unless headers set it or chunks is used.
 */
export function buildRequest({ method = 'GET', path: p = '/', headers = {}, body, chunks, host = '127.0.0.1' } = {}) {
  const h = { host, ...headers };
  const lower = Object.keys(h).map((k) => k.toLowerCase());
  let payload = Buffer.alloc(0);
  if (body !== undefined) {
    payload = Buffer.isBuffer(body) ? body : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    if (typeof body === 'object' && !Buffer.isBuffer(body) && !lower.includes('content-type')) h['content-type'] = 'application/json';
  }
  if (chunks) {
    if (!lower.includes('transfer-encoding')) h['transfer-encoding'] = 'chunked';
    payload = Buffer.concat([...chunks.map((c) => {
      const b = Buffer.from(c);
      return Buffer.concat([Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from('\r\n')]);
    }), Buffer.from('0\r\n\r\n')]);
  } else if (body !== undefined && !lower.includes('content-length')) {
    h['content-length'] = String(payload.length);
  }
  const head = `${method} ${p} HTTP/1.1\r\n${Object.entries(h).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), payload]);
}

/** A chat completion request for buildRequest (Bearer auth unless key is null). */
export function chatRequest({ model, key = KEY, stream, includeUsage, messages, headers = {}, extra = {} } = {}) {
  const body = { model, messages: messages ?? [{ role: 'user', content: 'Hello!' }], ...extra };
  if (stream !== undefined) body.stream = stream;
  if (includeUsage !== undefined) body.stream_options = { include_usage: includeUsage };
  const h = { ...headers };
  if (key !== null) h.authorization = `Bearer ${key}`;
  return { method: 'POST', path: '/v1/chat/completions', headers: h, body };
}

const CRLF2 = Buffer.from('\r\n\r\n');

/** One response read by RawConn. Its body fills in as bytes arrive. */
export class RawResponse {
  constructor() {
    this.status = null;
    this.reason = '';
    this.version = '';
    /** Lower-cased header name -> value (repeated headers joined by ', '). */
    this.headers = {};
    /** [name, value] pairs as sent. */
    this.headerList = [];
    this.rawHead = '';
    this.bodyChunks = [];
    this.bodyLength = 0;
    /** sha256 of the body when the connection hashes bodies. */
    this.sha256 = null;
    /** Sizes of the chunks of a chunked body, in order. */
    this.chunkSizes = [];
    this.chunked = false;
    /** True once the body is over: all Content-Length bytes, the 0-chunk, or the close. */
    this.complete = false;
    /** Chunked body ended with its terminator (0\r\n\r\n). */
    this.terminated = false;
    /** The connection closed before the body was complete. */
    this.truncated = false;
    this.headAt = null;
    this.completeAt = null;
  }

  /** The body as one Buffer (empty when the connection discards bodies). */
  get body() {
    return Buffer.concat(this.bodyChunks);
  }

  text() {
    return this.body.toString('utf8');
  }

  json() {
    return JSON.parse(this.text());
  }
}

/**
 * A client connection speaking raw HTTP/1.1: write any bytes, read responses
 * in order (1xx interim responses are responses of their own).
 */
export class RawConn extends EventEmitter {
  constructor(socket, { keepBody = true, hashBody = false } = {}) {
    super();
    this.setMaxListeners(0);
    this.socket = socket;
    this.keepBody = keepBody;
    this.hashBody = hashBody;
    /** Responses in order, the last one possibly still being read. */
    this.responses = [];
    this.closed = false;
    this.closedAt = null;
    /** The socket error, if any (ECONNRESET, EPIPE, or a protocolError). */
    this.error = null;
    /** Set when the server sent bytes that are not HTTP/1.1. */
    this.protocolError = null;
    this._pending = Buffer.alloc(0);
    this._state = 'head';
    this._remaining = 0;
    this._cur = null;
    this._hash = null;
    this._cursor = 0;
    socket.on('data', (d) => {
      try {
        this._feed(d);
      } catch (err) {
        // Unparseable bytes from the server: remember why, drop the connection.
        this.protocolError = err;
        this.error = err;
        socket.destroy();
      }
    });
    socket.on('error', (err) => {
      this.error = err;
    });
    socket.on('close', () => {
      this.closed = true;
      this.closedAt = performance.now();
      if (this._cur && !this._cur.complete) {
        if (this._state === 'body-close') this._cur.terminated = true;
        else this._cur.truncated = true;
        this._complete();
      }
      this.emit('progress');
      this.emit('close');
    });
  }

  /** Connects over TLS (for talking to the mock upstream directly). */
  static openTls(port, { ca, servername = 'localhost', ...opts } = {}) {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ port, host: '127.0.0.1', ca, servername });
      s.once('secureConnect', () => {
        s.off('error', reject);
        resolve(new RawConn(s, opts));
      });
      s.once('error', reject);
    });
  }

  /** Connects to 127.0.0.1:port. */
  static open(port, opts) {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host: '127.0.0.1' });
      s.setNoDelay(true);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawConn(s, opts));
      });
      s.once('error', reject);
    });
  }

  /** Writes bytes (or a buildRequest() spec); resolves when handed to the kernel. */
  write(data) {
    const buf = Buffer.isBuffer(data) || typeof data === 'string' ? Buffer.from(data) : buildRequest(data);
    return new Promise((resolve, reject) => {
      this.socket.write(buf, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** Stops reading from the socket (the kernel buffers fill, the peer feels backpressure). */
  pause() {
    this.socket.pause();
  }

  resume() {
    this.socket.resume();
  }

  /** Closes the connection at once. */
  destroy() {
    this.socket.destroy();
  }

  /** Half-closes (sends FIN) after pending writes. */
  end() {
    this.socket.end();
  }

  /** Resolves with pred()'s first truthy value, re-checked as bytes arrive. */
  waitUntil(pred, timeoutMs, what = 'condition') {
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
        reject(new Error(`raw client: timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.off('progress', check);
      };
      this.on('progress', check);
      check();
    });
  }

  /**
   * The next response not yet taken, as soon as its head has arrived (its body
   * may still be coming: see complete, or waitBody()).
   */
  async nextHead(timeoutMs = 5000) {
    const i = this._cursor;
    const r = await this.waitUntil(() => (this.responses[i]?.status != null && this.responses[i])
      || (this.closed && !this.responses[i] && { closedEarly: true }), timeoutMs, `the head of response #${i + 1}`);
    if (r.closedEarly) {
      const why = this.error ? ` (${this.error.code ?? this.error.message})` : '';
      throw new Error(`connection closed before response #${i + 1}${why}`);
    }
    this._cursor = i + 1;
    return r;
  }

  /** Waits until response r is complete (body over, or cut by a close). */
  async waitBody(r, timeoutMs = 5000) {
    await this.waitUntil(() => r.complete, timeoutMs, `the body of a ${r.status} response (${r.bodyLength} bytes so far)`);
    return r;
  }

  /** The next response not yet taken, complete. */
  async next(timeoutMs = 5000) {
    return this.waitBody(await this.nextHead(timeoutMs), timeoutMs);
  }

  /** Resolves true once the connection is closed, false if still open after timeoutMs. */
  async waitClosed(timeoutMs) {
    try {
      await this.waitUntil(() => this.closed, timeoutMs, 'close');
      return true;
    } catch {
      return false;
    }
  }

  _complete() {
    const r = this._cur;
    r.complete = true;
    r.completeAt = performance.now();
    if (this._hash) r.sha256 = this._hash.digest('hex');
    this._hash = null;
    this._cur = null;
    this._state = 'head';
  }

  _body(buf) {
    const r = this._cur;
    r.bodyLength += buf.length;
    if (this.keepBody) r.bodyChunks.push(Buffer.from(buf));
    if (this._hash) this._hash.update(buf);
  }

  _feed(data) {
    let buf = this._pending.length ? Buffer.concat([this._pending, data]) : data;
    let off = 0;
    for (;;) {
      if (this._state === 'head') {
        if (off >= buf.length) break;
        const end = buf.indexOf(CRLF2, off);
        if (end < 0) {
          if (buf.length - off > 65536) throw new Error('raw client: response head over 64 KiB');
          break;
        }
        const head = buf.subarray(off, end).toString('latin1');
        off = end + 4;
        const r = new RawResponse();
        r.rawHead = head;
        r.headAt = performance.now();
        const [statusLine, ...lines] = head.split('\r\n');
        const m = /^(HTTP\/\d\.\d) (\d{3})(?: (.*))?$/.exec(statusLine);
        if (!m) throw new Error(`raw client: bad status line ${JSON.stringify(statusLine)}`);
        r.version = m[1];
        r.status = Number(m[2]);
        r.reason = m[3] ?? '';
        for (const line of lines) {
          const c = line.indexOf(':');
          const name = line.slice(0, c).trim();
          const value = line.slice(c + 1).trim();
          r.headerList.push([name, value]);
          const k = name.toLowerCase();
          r.headers[k] = k in r.headers ? `${r.headers[k]}, ${value}` : value;
        }
        this.responses.push(r);
        this._cur = r;
        this._hash = this.hashBody ? crypto.createHash('sha256') : null;
        const te = (r.headers['transfer-encoding'] ?? '').toLowerCase();
        if (r.status < 200 || r.status === 204 || r.status === 304) {
          this._complete();
        } else if (te.split(',').map((s) => s.trim()).includes('chunked')) {
          r.chunked = true;
          this._state = 'chunk-size';
        } else if (r.headers['content-length'] !== undefined) {
          this._remaining = Number(r.headers['content-length']);
          if (this._remaining === 0) this._complete();
          else this._state = 'body-cl';
        } else {
          this._state = 'body-close';
        }
      } else if (this._state === 'body-cl') {
        if (off >= buf.length) break;
        const n = Math.min(this._remaining, buf.length - off);
        this._body(buf.subarray(off, off + n));
        off += n;
        this._remaining -= n;
        if (this._remaining === 0) {
          this._cur.terminated = true;
          this._complete();
        }
      } else if (this._state === 'body-close') {
        if (off < buf.length) this._body(buf.subarray(off));
        off = buf.length;
        break;
      } else if (this._state === 'chunk-size') {
        const end = buf.indexOf('\r\n', off);
        if (end < 0) break;
        const line = buf.subarray(off, end).toString('latin1');
        off = end + 2;
        const size = parseInt(line.split(';')[0], 16);
        if (!/^[0-9a-fA-F]+/.test(line) || Number.isNaN(size)) throw new Error(`raw client: bad chunk size line ${JSON.stringify(line)}`);
        this._cur.chunkSizes.push(size);
        if (size === 0) {
          this._state = 'trailers';
        } else {
          this._remaining = size;
          this._state = 'chunk-data';
        }
      } else if (this._state === 'chunk-data') {
        if (off >= buf.length) break;
        const n = Math.min(this._remaining, buf.length - off);
        this._body(buf.subarray(off, off + n));
        off += n;
        this._remaining -= n;
        if (this._remaining === 0) this._state = 'chunk-crlf';
      } else if (this._state === 'chunk-crlf') {
        if (buf.length - off < 2) break;
        if (buf[off] !== 0x0d || buf[off + 1] !== 0x0a) throw new Error('raw client: chunk data not followed by CRLF');
        off += 2;
        this._state = 'chunk-size';
      } else if (this._state === 'trailers') {
        const end = buf.indexOf('\r\n', off);
        if (end < 0) break;
        const empty = end === off;
        off = end + 2;
        if (empty) {
          this._cur.terminated = true;
          this._complete();
        }
      }
    }
    this._pending = off < buf.length ? Buffer.from(buf.subarray(off)) : Buffer.alloc(0);
    this.emit('progress');
  }
}

/** One request on a fresh connection; resolves with the complete response. */
export async function rawRequest(port, spec, { timeoutMs = 5000 } = {}) {
  const conn = await RawConn.open(port);
  try {
    await conn.write(spec);
    return await conn.next(timeoutMs);
  } finally {
    conn.destroy();
  }
}

/** A fresh random request id for a test. */
export function newRequestId(tag = 'it') {
  return `${tag}-${crypto.randomBytes(8).toString('hex')}`;
}
