// http.test.mjs - HTTP/1.1 as clients really speak it: keep-alive,
// pipelining, chunked request bodies, Expect: 100-continue, request ids,
// the health endpoints and the model list.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startUpstream } from './lib/upstream.mjs';
import {
  startGateway, baseConfig, RawConn, rawRequest, chatRequest, buildRequest, newRequestId, sleep, KEY, LIMITED_KEY,
} from './lib/gateway.mjs';
import { fixture, assertOpenAiError, assertCleanShutdown } from './lib/expect.mjs';

const T = { timeout: 15000 };

describe('HTTP/1.1 behaviour', () => {
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

  it('GET /health and /health/ready answer 200', T, async () => {
    for (const p of ['/health', '/health/ready']) {
      const r = await rawRequest(gw.port, { method: 'GET', path: p });
      assert.equal(r.status, 200, `${p}: ${r.text()}`);
    }
  });

  it('keeps the connection alive across requests', T, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      const specs = [
        { method: 'GET', path: '/health' },
        chatRequest({ model: 'mock-1' }),
        { method: 'GET', path: '/v1/models', headers: { authorization: `Bearer ${KEY}` } },
        chatRequest({ model: 'fx/openai/chat_completion_response' }),
        chatRequest({ model: 'nope' }), // an error does not cost the connection either
        { method: 'GET', path: '/health' },
      ];
      const statuses = [];
      for (const spec of specs) {
        await conn.write(spec);
        const r = await conn.next(10000);
        statuses.push(r.status);
        assert.notEqual((r.headers.connection ?? '').toLowerCase(), 'close', 'no Connection: close');
        assert.equal(conn.closed, false, 'the connection is still open');
      }
      assert.deepEqual(statuses, [200, 200, 200, 200, 404, 200]);
    } finally {
      conn.destroy();
    }
  });

  it('answers three pipelined requests in one write, in order', T, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      const ids = [newRequestId('p1'), newRequestId('p2'), newRequestId('p3')];
      // The first is slowest (the upstream holds its first byte 300 ms), so a
      // gateway that answers as work finishes would get the order wrong.
      await conn.write(Buffer.concat([
        buildRequest(chatRequest({ model: 'fx/openai/chat_completion_response?delay=300', headers: { 'x-request-id': ids[0] } })),
        buildRequest(chatRequest({ model: 'mock-1', headers: { 'x-request-id': ids[1] } })),
        buildRequest({ method: 'GET', path: '/health', headers: { 'x-request-id': ids[2] } }),
      ]));
      const rs = [await conn.next(10000), await conn.next(10000), await conn.next(10000)];
      assert.deepEqual(rs.map((r) => r.headers['x-request-id']), ids);
      assert.deepEqual(rs.map((r) => r.status), [200, 200, 200]);
      assert.ok(rs[0].body.equals(fixture('openai/chat_completion_response.json')));
      assert.equal(rs[1].json().object, 'chat.completion');
    } finally {
      conn.destroy();
    }
  });

  it('reads a chunked request body, however its frames are split across writes', T, async () => {
    const id = newRequestId('chunked');
    const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Say hello in five words, please.' }];
    const json = JSON.stringify({ model: 'fx/openai/chat_completion_response', messages });
    const chunks = [json.slice(0, 1), json.slice(1, 17), json.slice(17, 18), json.slice(18, 60), json.slice(60)];
    const wire = buildRequest({
      method: 'POST', path: '/v1/chat/completions', chunks,
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', 'x-request-id': id },
    });
    const conn = await RawConn.open(gw.port);
    try {
      // Uneven writes, 15 ms apart: frame headers, data and CRLFs get split.
      const cuts = [0, wire.indexOf('\r\n\r\n') + 4];
      for (let at = cuts[1] + 3; at < wire.length; at += 7) cuts.push(at);
      cuts.push(wire.length);
      for (let i = 1; i < cuts.length; i++) {
        await conn.write(wire.subarray(cuts[i - 1], cuts[i]));
        await sleep(15);
      }
      const r = await conn.next(10000);
      assert.equal(r.status, 200, r.text());
      assert.ok(r.body.equals(fixture('openai/chat_completion_response.json')));
      const rec = await up.waitForRequestId(id);
      assert.deepEqual(rec.body.messages, messages, 'the whole body reached the upstream');
    } finally {
      conn.destroy();
    }
  });

  it('answers Expect: 100-continue with 100 Continue, then the response', T, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      const body = JSON.stringify({ model: 'mock-1', messages: [{ role: 'user', content: 'hi' }] });
      await conn.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${KEY}\r\n` +
        `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nexpect: 100-continue\r\n\r\n`);
      const interim = await conn.next(5000);
      assert.equal(interim.status, 100);
      assert.equal(interim.bodyLength, 0);
      await conn.write(body);
      const r = await conn.next(10000);
      assert.equal(r.status, 200, r.text());
      assert.equal(r.json().object, 'chat.completion');
    } finally {
      conn.destroy();
    }
  });

  it('rejects an unauthenticated Expect: 100-continue request with 401', T, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      const body = JSON.stringify({ model: 'mock-1', messages: [] });
      await conn.write('POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n' +
        `content-type: application/json\r\ncontent-length: ${body.length}\r\nexpect: 100-continue\r\n\r\n`);
      let r = await conn.next(5000);
      if (r.status === 100) {
        // Allowed (RFC 9110 10.1.1), if wasteful: then the body, then the 401.
        await conn.write(body);
        r = await conn.next(5000);
      }
      assertOpenAiError(r, 401);
    } finally {
      conn.destroy();
    }
  });

  it('echoes a client x-request-id and generates one (32 hex) otherwise', T, async () => {
    const mine = newRequestId('echo');
    for (const spec of [{ method: 'GET', path: '/health' }, chatRequest({ model: 'mock-1' }), chatRequest({ model: 'nope' })]) {
      const echoed = await rawRequest(gw.port, { ...spec, headers: { ...spec.headers, 'x-request-id': mine } });
      assert.equal(echoed.headers['x-request-id'], mine);
      const a = await rawRequest(gw.port, spec);
      const b = await rawRequest(gw.port, spec);
      assert.match(a.headers['x-request-id'] ?? '', /^[0-9a-f]{32}$/);
      assert.match(b.headers['x-request-id'] ?? '', /^[0-9a-f]{32}$/);
      assert.notEqual(a.headers['x-request-id'], b.headers['x-request-id']);
    }
  });

  it('forwards the generated x-request-id upstream and logs it', T, async () => {
    const before = up.requests.length;
    const r = await rawRequest(gw.port, chatRequest({ model: 'fx/openai/chat_completion_response' }));
    assert.equal(r.status, 200);
    const id = r.headers['x-request-id'];
    const rec = await up.waitFor(() => up.requests.slice(before).find((q) => q.headers['x-request-id'] === id), 5000, 'the request upstream');
    assert.ok(rec);
    const log = await gw.accessLogFor(id);
    assert.equal(log.status, 200);
  });

  it('lists the models the key may use', T, async () => {
    const full = await rawRequest(gw.port, { method: 'GET', path: '/v1/models', headers: { authorization: `Bearer ${KEY}` } });
    assert.equal(full.status, 200, full.text());
    const fj = full.json();
    assert.equal(fj.object, 'list');
    assert.ok(Array.isArray(fj.data));
    for (const m of fj.data) {
      assert.equal(typeof m.id, 'string');
      assert.equal(m.object, 'model');
    }
    const ids = fj.data.map((m) => m.id);
    assert.ok(ids.includes('fx-chat') && ids.includes('mock-1'), `ids: ${ids}`);

    const limited = await rawRequest(gw.port, { method: 'GET', path: '/v1/models', headers: { 'x-api-key': LIMITED_KEY } });
    assert.equal(limited.status, 200, limited.text());
    assert.deepEqual(limited.json().data.map((m) => m.id), ['mock-1']);

    assertOpenAiError(await rawRequest(gw.port, { method: 'GET', path: '/v1/models' }), 401);
  });

  it('accepts the key in x-api-key', T, async () => {
    const r = await rawRequest(gw.port, chatRequest({ model: 'mock-1', key: null, headers: { 'x-api-key': KEY } }));
    assert.equal(r.status, 200, r.text());
  });

  it('exits 0 on SIGTERM, with no sanitizer report', { timeout: 20000 }, async () => {
    await assertCleanShutdown(gw);
  });
});
