// relay.test.mjs - tollgate relays the recorded provider answers: non-stream
// bodies byte for byte, and every OpenAI-format SSE fixture byte for byte,
// minus the usage-only chunk unless the caller asked for usage. Upstream it
// always asks for usage, sends its own key, and forwards x-request-id; the
// access log carries the provider's usage numbers.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startUpstream } from './lib/upstream.mjs';
import { startGateway, baseConfig, RawConn, rawRequest, chatRequest, newRequestId, KEY, LIMITED_KEY, UPSTREAM_KEY } from './lib/gateway.mjs';
import { fixture, expectedStream, fixtureUsage, assertAccessLogShape, assertCleanShutdown } from './lib/expect.mjs';
import { FIXTURES } from './lib/paths.mjs';

const T = { timeout: 20000 };

// Every OpenAI-format stream fixture (fireworks has none; the OpenRouter
// mid-stream error recording is an error case, not a relay case).
const STREAM_FIXTURES = [
  ...fs.readdirSync(path.join(FIXTURES, 'openai')).filter((f) => f.endsWith('.sse')).sort().map((f) => `openai/${f}`),
  'openrouter/chat_stream.sse',
];

/** Asserts what the upstream saw for one proxied request. */
function assertUpstreamRequest(rec, { id, model, stream }) {
  assert.equal(rec.method, 'POST');
  assert.equal(rec.path, '/v1/chat/completions');
  assert.equal(rec.headers.authorization, `Bearer ${UPSTREAM_KEY}`, 'upstream gets the provider key');
  const raw = rec.rawHeaders.join('\n') + rec.rawBody.toString('utf8');
  assert.ok(!raw.includes(KEY) && !raw.includes(LIMITED_KEY), 'the client key never goes upstream');
  assert.equal(rec.headers['x-request-id'], id, 'x-request-id forwarded upstream');
  assert.ok(rec.body, 'upstream body is JSON');
  assert.equal(rec.body.model, model, 'upstream model is the provider model');
  if (stream) {
    assert.equal(rec.body.stream, true);
    assert.equal(rec.body.stream_options?.include_usage, true, 'tollgate always asks upstream for usage');
  } else {
    assert.notEqual(rec.body.stream, true);
  }
}

describe('relay through tollgate', () => {
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

  it('non-stream: the client gets the fixture JSON bytes', T, async () => {
    const id = newRequestId('relay');
    const r = await rawRequest(gw.port, chatRequest({ model: 'fx/openai/chat_completion_response', headers: { 'x-request-id': id } }));
    assert.equal(r.status, 200, r.text());
    assert.match(r.headers['content-type'], /^application\/json/);
    assert.ok(r.body.equals(fixture('openai/chat_completion_response.json')), `body differs from the fixture:\n${r.text()}`);
    assert.equal(r.headers['x-request-id'], id, 'the client sees its own request id, not the upstream one');
    assert.match(r.headers['x-tollgate-overhead-us'] ?? '', /^\d+$/, 'x-tollgate-overhead-us header');
    assertUpstreamRequest(await up.waitForRequestId(id), { id, model: 'openai/chat_completion_response', stream: false });
    const log = await gw.accessLogFor(id);
    assertAccessLogShape(log);
    assert.equal(log.status, 200);
    assert.equal(log.key_alias, 'test');
    assert.equal(log.provider, 'up');
    assert.equal(log.prompt_tokens, 19);
    assert.equal(log.completion_tokens, 10);
    assert.equal(log.usage_source, 'provider');
  });

  it('non-stream via the fx-chat alias sends the configured provider model', T, async () => {
    const id = newRequestId('alias');
    const r = await rawRequest(gw.port, chatRequest({ model: 'fx-chat', headers: { 'x-request-id': id } }));
    assert.equal(r.status, 200, r.text());
    assert.ok(r.body.equals(fixture('openai/chat_completion_response.json')));
    assertUpstreamRequest(await up.waitForRequestId(id), { id, model: 'gpt-4o-mini', stream: false });
  });

  it('non-stream: an OpenRouter-shaped body is relayed untouched', T, async () => {
    const id = newRequestId('or');
    const r = await rawRequest(gw.port, chatRequest({ model: 'fx/openrouter/chat_completion_response', headers: { 'x-request-id': id } }));
    assert.equal(r.status, 200, r.text());
    assert.ok(r.body.equals(fixture('openrouter/chat_completion_response.json')));
  });

  for (const rel of STREAM_FIXTURES) {
    for (const asked of [false, true]) {
      const what = asked ? 'with include_usage: the exact fixture bytes' : 'without include_usage: the fixture minus the usage-only chunk';
      it(`stream ${rel} ${what}`, T, async () => {
        const id = newRequestId('sse');
        const providerModel = rel.replace(/\.sse$/, '');
        const conn = await RawConn.open(gw.port);
        try {
          await conn.write(chatRequest({
            model: `fx/${providerModel}`, stream: true, includeUsage: asked ? true : undefined, headers: { 'x-request-id': id },
          }));
          const r = await conn.next(15000);
          assert.equal(r.status, 200, r.text());
          assert.match(r.headers['content-type'], /^text\/event-stream/);
          assert.equal(r.headers['x-request-id'], id);
          assert.match(r.headers['x-tollgate-overhead-us'] ?? '', /^\d+$/, 'x-tollgate-overhead-us header');
          assert.ok(r.terminated && !r.truncated, 'the stream ends cleanly');
          const want = expectedStream(rel, asked);
          if (!r.body.equals(want)) {
            assert.equal(r.text(), want.toString('utf8'), 'client bytes == expected bytes');
          }
          assertUpstreamRequest(await up.waitForRequestId(id), { id, model: providerModel, stream: true });
          const usage = fixtureUsage(rel);
          const log = await gw.accessLogFor(id);
          assertAccessLogShape(log);
          assert.equal(log.status, 200);
          assert.equal(log.key_alias, 'test');
          assert.equal(log.provider, 'up');
          assert.ok([`fx/${providerModel}`, providerModel].includes(log.model), `access log model ${log.model}`);
          assert.equal(log.prompt_tokens, usage.prompt_tokens);
          assert.equal(log.completion_tokens, usage.completion_tokens);
          assert.equal(log.usage_source, 'provider');
          assert.equal(typeof log.ttft_ms, 'number');
        } finally {
          conn.destroy();
        }
      });
    }
  }

  it('writes nothing but JSON access-log lines to stdout', T, async () => {
    await gw.waitForAccessLog(() => gw.accessLog.length >= 2 * STREAM_FIXTURES.length + 3, 5000, 'one line per request');
    assert.deepEqual(gw.stdoutGarbage, []);
    for (const e of gw.accessLog) assertAccessLogShape(e);
    const ids = gw.accessLog.map((e) => e.request_id);
    assert.equal(new Set(ids).size, ids.length, 'one line per request');
  });

  it('exits 0 on SIGTERM, with no sanitizer report', { timeout: 20000 }, async () => {
    await assertCleanShutdown(gw);
  });
});
