// errors.test.mjs - every error the contract lists comes back with its status
// and an OpenAI-shaped body {"error":{message,type,param,code}}: client
// mistakes (401, 403, 404, 405, 400, 413, 431, 408), relayed upstream errors,
// and upstream failures (502 bad certificate or refused port, 504 timeout).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { startUpstream } from './lib/upstream.mjs';
import {
  Gateway, startGateway, baseConfig, RawConn, rawRequest, chatRequest, buildRequest, newRequestId, sleep, KEY, LIMITED_KEY,
} from './lib/gateway.mjs';
import { fixture, assertOpenAiError, assertCleanShutdown } from './lib/expect.mjs';

const T = { timeout: 15000 };
const MiB = 1024 * 1024;

/** A port on 127.0.0.1 that nothing listens on (bound, then released). */
async function refusedPort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

describe('client errors', () => {
  let up;
  let gw;
  before(async () => {
    up = await startUpstream();
    gw = await startGateway(baseConfig(up.baseUrl));
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
  });

  // Runs one request and checks that none of it reached the upstream.
  async function rejected(spec, status, opts) {
    const before = up.requests.length;
    const r = await rawRequest(gw.port, spec);
    const e = assertOpenAiError(r, status, opts);
    assert.equal(up.requests.length, before, 'a rejected request never reaches the upstream');
    return { r, e };
  }

  it('401 without a key', T, async () => {
    await rejected(chatRequest({ model: 'fx-chat', key: null }), 401);
  });

  it('401 with an unknown key (Bearer and x-api-key)', T, async () => {
    await rejected(chatRequest({ model: 'fx-chat', key: 'tg-nope-0123456789abcdef' }), 401);
    await rejected(chatRequest({ model: 'fx-chat', key: null, headers: { 'x-api-key': 'tg-nope-0123456789abcdef' } }), 401);
  });

  it('the error does not echo the key that was sent', T, async () => {
    const { r } = await rejected(chatRequest({ model: 'fx-chat', key: 'tg-secret-looking-key-9876543210' }), 401);
    assert.ok(!r.text().includes('tg-secret-looking-key-9876543210'));
  });

  it('403 for a model the key may not use', T, async () => {
    await rejected(chatRequest({ model: 'fx-chat', key: LIMITED_KEY }), 403);
  });

  it('404 model_not_found for an unknown model', T, async () => {
    const { e } = await rejected(chatRequest({ model: 'no-such-model' }), 404, { code: 'model_not_found' });
    assert.match(e.message, /no-such-model/);
  });

  it('404 for an unknown route', T, async () => {
    await rejected({ method: 'GET', path: '/v1/nope', headers: { authorization: `Bearer ${KEY}` } }, 404);
    await rejected({ method: 'POST', path: '/v2/chat/completions', headers: { authorization: `Bearer ${KEY}` }, body: {} }, 404);
  });

  it('405 with Allow for a wrong method', T, async () => {
    const { r } = await rejected({ method: 'GET', path: '/v1/chat/completions', headers: { authorization: `Bearer ${KEY}` } }, 405);
    assert.match(r.headers.allow ?? '', /\bPOST\b/, `Allow: ${r.headers.allow}`);
    const { r: r2 } = await rejected({ method: 'POST', path: '/v1/models', headers: { authorization: `Bearer ${KEY}` }, body: {} }, 405);
    assert.match(r2.headers.allow ?? '', /\bGET\b/, `Allow: ${r2.headers.allow}`);
  });

  it('400 for malformed JSON, naming the offset', T, async () => {
    const text = '{"model": "fx-chat", "messages": [}';
    const bad = text.indexOf('}', 30);
    const { e } = await rejected({ method: 'POST', path: '/v1/chat/completions', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body: text }, 400);
    // "offset 34", "at byte 34", "position 34": any wording, but the number must be right.
    const offsets = [...e.message.matchAll(/(?:offset|byte|position|char(?:acter)?|column)\D{0,3}(\d+)/gi)].map((m) => Number(m[1]));
    assert.ok(offsets.length > 0, `an offset ("offset|byte|position N") in: ${e.message}`);
    assert.ok(offsets.some((n) => Math.abs(n - bad) <= 2), `offset ${offsets} near the bad byte at ${bad}: ${e.message}`);
  });

  it('400 for a body that is not an object, or lacks model or messages', T, async () => {
    const auth = { authorization: `Bearer ${KEY}` };
    await rejected({ method: 'POST', path: '/v1/chat/completions', headers: auth, body: [1, 2] }, 400);
    const { e: noModel } = await rejected({ method: 'POST', path: '/v1/chat/completions', headers: auth, body: { messages: [{ role: 'user', content: 'x' }] } }, 400);
    assert.match(`${noModel.message} ${noModel.param}`, /model/);
    const { e: noMsgs } = await rejected({ method: 'POST', path: '/v1/chat/completions', headers: auth, body: { model: 'fx-chat' } }, 400);
    assert.match(`${noMsgs.message} ${noMsgs.param}`, /messages/);
  });

  it('413 for a Content-Length over max_body_bytes (decided on the header)', T, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      await conn.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${KEY}\r\ncontent-type: application/json\r\ncontent-length: ${2 * MiB}\r\n\r\n`);
      assertOpenAiError(await conn.next(5000), 413);
    } finally {
      conn.destroy();
    }
  });

  it('413 for a chunked body that grows over max_body_bytes', T, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      await conn.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n`);
      const piece = Buffer.alloc(64 * 1024, 0x20);
      const frame = Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]);
      let sent = 0;
      // Stop sending as soon as the answer comes; never more than 1.5 MiB.
      const answered = () => conn.responses.length > 0 || conn.closed;
      while (!answered() && sent < 1.5 * MiB) {
        // A write can block once tollgate stops reading: stop waiting on it when the answer comes.
        await Promise.race([conn.write(frame).catch(() => {}), conn.waitUntil(answered, 10000).catch(() => {})]);
        sent += piece.length;
        await sleep(5);
      }
      const r = await conn.next(5000);
      assertOpenAiError(r, 413);
      assert.ok(sent > MiB, `the 413 came after ${sent} bytes, not before the limit`);
    } finally {
      conn.destroy();
    }
  });

  it('431 for more than max_headers headers', T, async () => {
    const headers = { authorization: `Bearer ${KEY}` };
    for (let i = 0; i < 101; i++) headers[`x-filler-${i}`] = 'v';
    assertOpenAiError(await rawRequest(gw.port, { method: 'GET', path: '/v1/models', headers }), 431);
  });

  it('431 for headers over max_header_bytes', T, async () => {
    const headers = { authorization: `Bearer ${KEY}`, 'x-big': 'a'.repeat(17 * 1024) };
    assertOpenAiError(await rawRequest(gw.port, { method: 'GET', path: '/v1/models', headers }), 431);
  });

  it('a request just under the limits is served', T, async () => {
    const headers = { authorization: `Bearer ${KEY}` };
    for (let i = 0; i < 90; i++) headers[`x-filler-${i}`] = 'v';
    const r = await rawRequest(gw.port, { method: 'GET', path: '/v1/models', headers });
    assert.equal(r.status, 200, r.text());
  });

  for (const [name, rel, status] of [
    ['429 (OpenAI rate limit)', 'openai/error_429', 429],
    ['429 (OpenAI insufficient quota)', 'openai/error_429_insufficient_quota', 429],
    ['429 (OpenRouter shape)', 'openrouter/error_429_provider_rate_limited', 429],
    ['404 (upstream model_not_found)', 'openai/error_404_model_not_found', 404],
  ]) {
    it(`relays an upstream ${name} with its status and body`, T, async () => {
      for (const stream of [false, true]) {
        const id = newRequestId('relay-err');
        const r = await rawRequest(gw.port, chatRequest({ model: `fx/${rel}`, stream, headers: { 'x-request-id': id } }));
        assert.equal(r.status, status, r.text());
        assert.ok(r.body.equals(fixture(`${rel}.json`)), `relayed body differs:\n${r.text()}`);
        assert.equal(r.headers['x-request-id'], id);
        assert.ok(await up.waitForRequestId(id), 'it went upstream');
        const log = await gw.accessLogFor(id);
        assert.equal(log.status, status);
      }
    });
  }
  it('exits 0 on SIGTERM, with no sanitizer report', { timeout: 20000 }, async () => {
    await assertCleanShutdown(gw);
  });
});

describe('upstream failures', () => {
  const started = [];
  after(async () => {
    for (const x of started.reverse()) {
      if (x instanceof Gateway) await x.stop();
      else await x.close();
    }
  });

  async function gatewayTo(baseUrl, patch) {
    const gw = await startGateway(baseConfig(baseUrl, patch));
    started.push(gw);
    return gw;
  }

  for (const cert of ['wronghost', 'selfsigned']) {
    it(`502 when the upstream certificate does not verify (${cert})`, T, async () => {
      const up = await startUpstream({ cert });
      started.push(up);
      const gw = await gatewayTo(up.baseUrl);
      for (const stream of [false, true]) {
        const r = await rawRequest(gw.port, chatRequest({ model: 'fx/openai/chat_stream', stream }), { timeoutMs: 10000 });
        assertOpenAiError(r, 502);
      }
      assert.equal(up.requests.length, 0, 'no request was sent over the unverified connection');
      assert.ok(up.tcpConnections > 0, 'tollgate did try to connect');
    });
  }

  it('502 when the upstream port refuses connections', T, async () => {
    const gw = await gatewayTo(`https://localhost:${await refusedPort()}/v1`);
    const t0 = performance.now();
    const r = await rawRequest(gw.port, chatRequest({ model: 'fx-chat' }), { timeoutMs: 10000 });
    assertOpenAiError(r, 502);
    assert.ok(performance.now() - t0 < 5000, 'a refused connect fails fast');
  });

  it('504 when the upstream never sends a first byte (first_byte: 1s)', T, async () => {
    const up = await startUpstream();
    started.push(up);
    const gw = await gatewayTo(up.baseUrl, (c) => {
      c.providers[0].timeouts.first_byte = '1s';
    });
    for (const stream of [false, true]) {
      const t0 = performance.now();
      const id = newRequestId('hang');
      const r = await rawRequest(gw.port, chatRequest({ model: 'fx/openai/chat_stream?hang', stream, headers: { 'x-request-id': id } }), { timeoutMs: 10000 });
      const took = performance.now() - t0;
      assertOpenAiError(r, 504);
      assert.ok(took >= 900 && took < 4000, `504 after ${Math.round(took)} ms, want about 1 s`);
      const rec = await up.waitForRequestId(id);
      await up.waitFor(() => up.socketOf(rec).closedAt !== null, 2000, 'tollgate to close the timed-out upstream connection');
    }
  });

  it('every gateway here exits 0 on SIGTERM, with no sanitizer report', { timeout: 60000 }, async () => {
    const gws = started.filter((x) => x instanceof Gateway);
    assert.ok(gws.length >= 4, 'the gateways of the tests above started (see their failures)');
    for (const gw of gws) await assertCleanShutdown(gw);
  });
});

describe('slow clients', () => {
  let gw;
  before(async () => {
    gw = await startGateway(baseConfig('https://localhost:9/v1', (c) => {
      c.timeouts.header = '1s';
      c.timeouts.body = '1s';
    }));
  });
  after(async () => {
    await gw?.stop();
  });

  it('408 and a closed connection when the headers stall (header: 1s)', T, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      const t0 = performance.now();
      await conn.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${KEY}\r\n`);
      const r = await conn.next(5000);
      const took = performance.now() - t0;
      assertOpenAiError(r, 408);
      assert.ok(took >= 900 && took < 4000, `408 after ${Math.round(took)} ms, want about 1 s`);
      assert.ok(await conn.waitClosed(2000), 'the connection is closed after the 408');
    } finally {
      conn.destroy();
    }
  });

  it('408 and a closed connection when the body stalls (body: 1s)', T, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      const t0 = performance.now();
      await conn.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"model":`);
      const r = await conn.next(5000);
      const took = performance.now() - t0;
      assertOpenAiError(r, 408);
      assert.ok(took >= 900 && took < 4000, `408 after ${Math.round(took)} ms, want about 1 s`);
      assert.ok(await conn.waitClosed(2000), 'the connection is closed after the 408');
    } finally {
      conn.destroy();
    }
  });

  it('a client that trickles a whole request within the timeout is served', T, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      const bytes = buildRequest({ method: 'GET', path: '/health' });
      for (let i = 0; i < bytes.length; i += 8) {
        await conn.write(bytes.subarray(i, i + 8));
        await sleep(10);
      }
      const r = await conn.next(5000);
      assert.equal(r.status, 200);
    } finally {
      conn.destroy();
    }
  });

  it('exits 0 on SIGTERM, with no sanitizer report', { timeout: 20000 }, async () => {
    await assertCleanShutdown(gw);
  });
});
