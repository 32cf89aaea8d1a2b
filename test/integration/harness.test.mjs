// harness.test.mjs - checks the test harness itself, without tollgate: the TLS
// mock upstream replays fixtures byte-exactly in random pieces, follows its
// scripts and records what it saw; the raw HTTP client parses what servers
// send; the YAML writer writes what the daemon will read. If these fail, the
// other files' failures say nothing about the gateway.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { startUpstream, floodPlan, parseModel } from './lib/upstream.mjs';
import { RawConn, buildRequest, toYaml, baseConfig, UPSTREAM_KEY, sleep } from './lib/gateway.mjs';
import { splitEvents, isUsageOnlyChunk } from './lib/sse.mjs';
import { FIXTURES, TLS_DIR } from './lib/paths.mjs';

const CA = fs.readFileSync(path.join(TLS_DIR, 'ca.crt'));
const T = { timeout: 20000 };

function upstreamCall(model, { stream, includeUsage, key = UPSTREAM_KEY, headers = {} } = {}) {
  const body = { model, messages: [{ role: 'user', content: 'hi' }] };
  if (stream !== undefined) body.stream = stream;
  if (includeUsage !== undefined) body.stream_options = { include_usage: includeUsage };
  return buildRequest({
    method: 'POST', path: '/v1/chat/completions', host: 'localhost',
    headers: { authorization: `Bearer ${key}`, ...headers }, body,
  });
}

describe('mock upstream', () => {
  let up;
  before(async () => {
    up = await startUpstream();
  });
  after(async () => {
    await up?.close();
  });

  const sseFixtures = [
    ...fs.readdirSync(path.join(FIXTURES, 'openai')).filter((f) => f.endsWith('.sse')).map((f) => `openai/${f}`),
    'openrouter/chat_stream.sse',
  ];

  for (const fx of sseFixtures) {
    it(`replays ${fx} byte-exactly in random 1..64-byte chunks`, T, async () => {
      const want = fs.readFileSync(path.join(FIXTURES, fx));
      const conn = await RawConn.openTls(up.port, { ca: CA });
      try {
        await conn.write(upstreamCall(fx.replace(/\.sse$/, ''), { stream: true, includeUsage: true, headers: { 'x-request-id': `h-${fx}` } }));
        const r = await conn.next(10000);
        assert.equal(r.status, 200);
        assert.match(r.headers['content-type'], /^text\/event-stream/);
        assert.ok(r.chunked && r.terminated, 'chunked body with terminator');
        assert.ok(r.body.equals(want), 'body equals the fixture bytes');
        const sizes = r.chunkSizes.slice(0, -1);
        assert.ok(sizes.every((n) => n >= 1 && n <= 64), `chunk sizes within 1..64: ${sizes}`);
        assert.ok(new Set(sizes).size > 10, 'chunk sizes vary');
        const rec = await up.waitForRequestId(`h-${fx}`);
        assert.equal(rec.outcome, 'complete');
        assert.equal(rec.body.stream_options.include_usage, true);
      } finally {
        conn.destroy();
      }
    });
  }

  it('drops the usage-only chunk when include_usage was not asked for', T, async () => {
    const fixture = fs.readFileSync(path.join(FIXTURES, 'openai/chat_stream.sse'));
    const { events } = splitEvents(fixture);
    assert.equal(events.filter(isUsageOnlyChunk).length, 1);
    const conn = await RawConn.openTls(up.port, { ca: CA });
    try {
      await conn.write(upstreamCall('openai/chat_stream', { stream: true }));
      const r = await conn.next(10000);
      assert.ok(r.body.equals(Buffer.concat(events.filter((e) => !isUsageOnlyChunk(e)))));
    } finally {
      conn.destroy();
    }
  });

  it('replays a non-stream JSON fixture and records the request', T, async () => {
    const conn = await RawConn.openTls(up.port, { ca: CA });
    try {
      await conn.write(upstreamCall('openai/chat_completion_response', { headers: { 'x-request-id': 'rec-1' } }));
      const r = await conn.next(10000);
      assert.equal(r.status, 200);
      assert.ok(r.body.equals(fs.readFileSync(path.join(FIXTURES, 'openai/chat_completion_response.json'))));
      const rec = await up.waitForRequestId('rec-1');
      assert.equal(rec.method, 'POST');
      assert.equal(rec.path, '/v1/chat/completions');
      assert.equal(rec.headers.authorization, `Bearer ${UPSTREAM_KEY}`);
      assert.deepEqual(rec.body.messages, [{ role: 'user', content: 'hi' }]);
      assert.equal(rec.fixture, 'openai/chat_completion_response.json');
      const sock = up.socketOf(rec);
      assert.ok(sock && sock.closedAt === null, 'socket recorded and still open');
    } finally {
      conn.destroy();
    }
  });

  it('answers a wrong upstream key with the 401 fixture', T, async () => {
    const conn = await RawConn.openTls(up.port, { ca: CA });
    try {
      await conn.write(upstreamCall('openai/chat_completion_response', { key: 'tg-test-key-0123456789abcdef' }));
      const r = await conn.next(10000);
      assert.equal(r.status, 401);
      assert.ok(r.body.equals(fs.readFileSync(path.join(FIXTURES, 'openai/error_401.json'))));
    } finally {
      conn.destroy();
    }
  });

  it('answers an error fixture with its status and bytes', T, async () => {
    const conn = await RawConn.openTls(up.port, { ca: CA });
    try {
      await conn.write(upstreamCall('openrouter/error_429_provider_rate_limited', { stream: true }));
      const r = await conn.next(10000);
      assert.equal(r.status, 429);
      assert.ok(r.body.equals(fs.readFileSync(path.join(FIXTURES, 'openrouter/error_429_provider_rate_limited.json'))));
    } finally {
      conn.destroy();
    }
  });

  it('rejects an unknown script option instead of ignoring it', T, () => {
    assert.throws(() => parseModel('openai/chat_stream?rest=10'), /unknown option "rest"/);
    assert.deepEqual(parseModel('openai/chat_stream?reset=10&seed=3').script, { reset: 10, seed: 3 });
  });

  it('reset=N sends N body bytes, then a TCP reset', T, async () => {
    const fixture = fs.readFileSync(path.join(FIXTURES, 'openai/chat_stream.sse'));
    const conn = await RawConn.openTls(up.port, { ca: CA });
    await conn.write(upstreamCall('openai/chat_stream?reset=1000', { stream: true, includeUsage: true }));
    const r = await conn.next(10000);
    assert.equal(r.truncated, true);
    assert.equal(r.bodyLength, 1000);
    assert.ok(r.body.equals(fixture.subarray(0, 1000)));
    assert.equal(conn.error?.code, 'ECONNRESET');
    assert.equal(up.requests.at(-1).outcome, 'reset');
  });

  it('stall=N sends N bytes, then nothing; a client close is recorded at once', T, async () => {
    const conn = await RawConn.openTls(up.port, { ca: CA });
    await conn.write(upstreamCall('openai/chat_stream?stall=700', { stream: true, headers: { 'x-request-id': 'stall-1' } }));
    const r = await conn.nextHead(5000);
    await conn.waitUntil(() => r.bodyLength >= 700, 5000, '700 bytes');
    await sleep(400);
    assert.equal(r.bodyLength, 700);
    assert.equal(r.complete, false);
    const rec = await up.waitForRequestId('stall-1');
    assert.equal(rec.outcome, 'stalled');
    const t0 = performance.now();
    conn.destroy();
    const sock = await up.waitFor(() => up.socketOf(rec).closedAt !== null && up.socketOf(rec), 1000, 'socket close');
    assert.ok(sock.closedAt - t0 < 1000);
  });

  it('delay=MS holds back the first byte', T, async () => {
    const conn = await RawConn.openTls(up.port, { ca: CA });
    try {
      const t0 = performance.now();
      await conn.write(upstreamCall('openai/chat_completion_response?delay=400'));
      const r = await conn.next(5000);
      assert.equal(r.status, 200);
      assert.ok(r.headAt - t0 >= 390, `head after ${r.headAt - t0} ms`);
    } finally {
      conn.destroy();
    }
  });

  it('synthetic/flood pushes back on a paused reader and delivers every byte after', { timeout: 60000 }, async () => {
    const bytes = 20e6;
    const plan = floodPlan(bytes);
    const conn = await RawConn.openTls(up.port, { ca: CA, keepBody: false, hashBody: true });
    try {
      await conn.write(upstreamCall(`synthetic/flood?bytes=${bytes}`, { stream: true, headers: { 'x-request-id': 'flood-1' } }));
      const r = await conn.nextHead(5000);
      conn.pause();
      const rec = await up.waitForRequestId('flood-1');
      await sleep(1500);
      const sentWhilePaused = rec.bytesSent;
      assert.ok(rec.stallingSince !== null && performance.now() - rec.stallingSince > 1000, 'the mock is blocked in a write, for over 1 s');
      assert.ok(sentWhilePaused < bytes / 2, `only ${sentWhilePaused} bytes left the mock while the reader was paused`);
      conn.resume();
      await conn.waitUntil(() => r.complete, 50000, 'flood end');
      assert.equal(r.terminated, true);
      assert.equal(r.bodyLength, plan.totalBytes - plan.usage.length);
      assert.equal(r.bodyLength, rec.flood.withoutUsageBytes);
      assert.equal(r.sha256, rec.flood.sha256);
      assert.ok(rec.maxStallMs > 1000, `longest write stall ${rec.maxStallMs} ms`);
    } finally {
      conn.destroy();
    }
  });
});

describe('mock upstream with the wrong certificate', () => {
  let up;
  before(async () => {
    up = await startUpstream({ cert: 'wronghost' });
  });
  after(async () => {
    await up?.close();
  });

  it('fails hostname verification for localhost and records the failed handshake', T, async () => {
    await assert.rejects(RawConn.openTls(up.port, { ca: CA }), (err) => err.code === 'ERR_TLS_CERT_ALTNAME_INVALID');
    await up.waitFor(() => up.tlsErrors.length > 0, 2000, 'a recorded TLS error');
    assert.equal(up.requests.length, 0);
  });
});

describe('raw HTTP client', () => {
  let srv;
  let port;
  before(async () => {
    srv = http.createServer((req, res) => {
      const parts = [];
      req.on('data', (d) => parts.push(d));
      req.on('end', () => {
        const body = Buffer.concat(parts).toString();
        if (req.url === '/chunked') {
          res.write('ab');
          res.write('cde');
          res.end();
        } else {
          res.setHeader('x-echo-id', req.headers['x-id'] ?? '');
          res.end(`${req.method} ${req.url} ${body}`);
        }
      });
    });
    await new Promise((r) => srv.listen(0, '127.0.0.1', r));
    port = srv.address().port;
  });
  after(async () => {
    srv.closeAllConnections();
    await new Promise((r) => srv.close(r));
  });

  it('reads pipelined, chunked and content-length responses in order', T, async () => {
    const conn = await RawConn.open(port);
    try {
      await conn.write(Buffer.concat([
        buildRequest({ method: 'POST', path: '/a', headers: { 'x-id': '1' }, body: 'one' }),
        buildRequest({ method: 'GET', path: '/chunked' }),
        buildRequest({ method: 'POST', path: '/c', headers: { 'x-id': '3' }, chunks: ['th', 'ree'] }),
      ]));
      const a = await conn.next();
      const b = await conn.next();
      const c = await conn.next();
      assert.equal(a.text(), 'POST /a one');
      assert.equal(a.headers['x-echo-id'], '1');
      assert.equal(b.text(), 'abcde');
      assert.ok(b.chunked && b.terminated);
      assert.deepEqual(b.chunkSizes, [2, 3, 0]);
      assert.equal(c.text(), 'POST /c three');
    } finally {
      conn.destroy();
    }
  });

  it('marks a body cut by the connection as truncated', T, async () => {
    const s = http.createServer((req, res) => {
      res.writeHead(200, { 'content-length': '10' });
      res.write('12345');
      setTimeout(() => res.socket.destroy(), 50);
    });
    await new Promise((r) => s.listen(0, '127.0.0.1', r));
    const conn = await RawConn.open(s.address().port);
    await conn.write(buildRequest({ path: '/' }));
    const r = await conn.next();
    assert.equal(r.truncated, true);
    assert.equal(r.text(), '12345');
    await new Promise((r2) => s.close(r2));
  });
});

describe('config writer', () => {
  it('writes block YAML with quoting only where YAML needs it', T, () => {
    const y = toYaml(baseConfig('https://localhost:1234/v1'));
    assert.match(y, /^listen: "127\.0\.0\.1:0"$/m);
    assert.match(y, /^ {2}max_body_bytes: 1MiB$/m);
    assert.match(y, /^ {2}- name: up\n {4}type: openai_compatible\n {4}base_url: "https:\/\/localhost:1234\/v1"$/m);
    assert.match(y, /^ {2}- name: "fx\/\*"\n {4}provider: up$/m);
    assert.match(y, /^ {4}models: \[mock-1\]$/m);
    assert.match(y, /^ {6}first_byte: 5s$/m);
    assert.equal(toYaml({ a: 'yes', b: '100', c: 100, d: true }), 'a: "yes"\nb: "100"\nc: 100\nd: true\n');
  });

  it('is valid YAML that round-trips (checked with python3-yaml when present)', { timeout: 10000 }, async (t) => {
    const { spawnSync } = await import('node:child_process');
    const probe = spawnSync('python3', ['-c', 'import yaml'], { encoding: 'utf8' });
    if (probe.status !== 0) {
      t.skip('python3 with the yaml module is not installed');
      return;
    }
    const cfg = baseConfig('https://localhost:1234/v1', (c) => {
      c.providers[1].mock = { tokens_per_sec: 20 };
    });
    const r = spawnSync('python3', ['-c', 'import sys, yaml, json; print(json.dumps(yaml.safe_load(sys.stdin.read())))'], { input: toYaml(cfg), encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), cfg);
  });
});
