// endpoints.test.mjs - the endpoints besides chat: /v1/embeddings and
// /v1/completions relayed to OpenAI-format providers (and refused, clearly,
// for providers that have no such endpoint), /v1/models in both SDKs'
// shapes, and /v1/messages/count_tokens answered by the meter's tokenizer.
// The upstream here is a plain-HTTP OpenAI-compatible server that answers
// from the recorded fixtures and records what it was sent.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import OpenAI from 'openai';
import { get_encoding } from 'tiktoken';
import { startGateway, baseConfig, KEY, UPSTREAM_KEY } from './lib/gateway.mjs';
import { fixture } from './lib/expect.mjs';

function startPlainUpstream() {
  const seen = [];
  const server = http.createServer(async (req, res) => {
    const parts = [];
    for await (const c of req) parts.push(c);
    const body = JSON.parse(Buffer.concat(parts).toString('utf8'));
    seen.push({ path: req.url, headers: req.headers, body });
    const gem = /^\/v1beta\/models\/([^:]+):batchEmbedContents$/.exec(req.url);
    if (gem) {
      if (req.headers['x-goog-api-key'] !== UPSTREAM_KEY) {
        res.writeHead(400, { 'content-type': 'application/json' }).end(fixture('gemini/error_400_api_key_invalid.json'));
        return;
      }
      // one vector per request, derived from its text so the test can check the order
      const embeddings = body.requests.map((r) => ({ values: [r.content.parts[0].text.length, -0.25, 0.5] }));
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ embeddings }));
      return;
    }
    if (req.headers.authorization !== `Bearer ${UPSTREAM_KEY}`) {
      res.writeHead(401, { 'content-type': 'application/json' }).end(fixture('openai/error_401.json'));
      return;
    }
    if (req.url === '/v1/embeddings') {
      const f = body.encoding_format === 'base64' ? 'openai/embeddings_response_base64.json' : 'openai/embeddings_response.json';
      res.writeHead(200, { 'content-type': 'application/json', 'x-ratelimit-remaining-requests': '99' }).end(fixture(f));
      return;
    }
    if (req.url === '/v1/completions') {
      const id = 'cmpl-fixture';
      if (body.stream) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (const t of ['Hello', ' there']) {
          res.write(`data: {"id":"${id}","object":"text_completion","created":1,"model":"${body.model}","choices":[{"text":"${t}","index":0,"logprobs":null,"finish_reason":null}]}\n\n`);
        }
        res.write(`data: {"id":"${id}","object":"text_completion","created":1,"model":"${body.model}","choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}]}\n\n`);
        if (body.stream_options?.include_usage) {
          res.write(`data: {"id":"${id}","object":"text_completion","created":1,"model":"${body.model}","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}\n\n`);
        }
        res.end('data: [DONE]\n\n');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
        id, object: 'text_completion', created: 1, model: body.model,
        choices: [{ text: 'Hello there', index: 0, logprobs: null, finish_reason: 'stop' }],
        usage: { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 },
      }));
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"no","type":"invalid_request_error","param":null,"code":null}}');
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, seen, url: `http://127.0.0.1:${server.address().port}/v1` })));
}

describe('other endpoints', () => {
  let up;
  let gw;
  let client;
  before(async () => {
    up = await startPlainUpstream();
    gw = await startGateway(baseConfig(up.url, (cfg) => {
      delete cfg.providers[0].ca_file;
      cfg.models.push({ name: 'emb', provider: 'up', model: 'text-embedding-3-small' });
      cfg.models.push({ name: 'inst', provider: 'up', model: 'gpt-3.5-turbo-instruct' });
      cfg.providers.push({ name: 'mock-anthropic', type: 'mock', mock: { format: 'anthropic' } });
      cfg.providers.push({ name: 'gem', type: 'gemini', base_url: up.url.replace(/\/v1$/, '/v1beta'), api_key: UPSTREAM_KEY });
      cfg.models.push({ name: 'gem-emb', provider: 'gem', model: 'text-embedding-004' });
      cfg.models.push({ name: 'mock-claude', provider: 'mock-anthropic' });
    }));
    client = new OpenAI({ apiKey: KEY, baseURL: `http://127.0.0.1:${gw.port}/v1`, maxRetries: 0 });
  });
  after(async () => {
    await gw?.stop();
    await new Promise((r) => up?.server.close(r));
  });

  it('embeddings: floats and base64 relayed, the model rewritten, usage logged', async () => {
    const want = JSON.parse(fixture('openai/embeddings_response.json'));
    const r = await client.embeddings.create({ model: 'emb', input: 'The food was delicious and the waiter...', encoding_format: 'float' });
    assert.deepEqual(r.data[0].embedding, want.data[0].embedding);
    const sent = up.seen.at(-1);
    assert.equal(sent.path, '/v1/embeddings');
    assert.equal(sent.body.model, 'text-embedding-3-small');
    assert.equal(sent.body.input, 'The food was delicious and the waiter...');
    // the SDK's default is base64: the vector comes back decoded by the SDK
    const wantB64 = JSON.parse(fixture('openai/embeddings_response_base64.json'));
    const b = await client.embeddings.create({ model: 'emb', input: ['hello'] });
    assert.equal(up.seen.at(-1).body.encoding_format, 'base64');
    const raw = Buffer.from(wantB64.data[0].embedding, 'base64');
    assert.equal(b.data[0].embedding.length, raw.length / 4);
    assert.equal(b.data[0].embedding[0], raw.readFloatLE(0));
    const log = await gw.waitForAccessLog((l) => l.path === '/v1/embeddings' && l.usage_source === 'provider', 5000, 'embeddings log');
    assert.equal(log.prompt_tokens, want.usage.prompt_tokens);
    assert.equal(log.completion_tokens, 0);
  });

  it('embeddings to Gemini: batchEmbedContents, floats and base64 back, usage estimated', async () => {
    const r = await client.embeddings.create({ model: 'gem-emb', input: ['hello', 'sea'], encoding_format: 'float', dimensions: 3 });
    const sent = up.seen.at(-1);
    assert.equal(sent.path, '/v1beta/models/text-embedding-004:batchEmbedContents');
    assert.equal(sent.headers['x-goog-api-key'], UPSTREAM_KEY);
    assert.deepEqual(sent.body.requests.map((q) => q.content.parts[0].text), ['hello', 'sea']);
    assert.equal(sent.body.requests[0].model, 'models/text-embedding-004');
    assert.equal(sent.body.requests[0].outputDimensionality, 3);
    assert.deepEqual(r.data.map((d) => d.embedding), [[5, -0.25, 0.5], [3, -0.25, 0.5]]);
    assert.deepEqual(r.data.map((d) => d.index), [0, 1]);
    assert.equal(r.model, 'gem-emb');
    // the SDK default: base64 float32, decoded by the SDK to the same numbers
    const b = await client.embeddings.create({ model: 'gem-emb', input: 'hello' });
    assert.deepEqual(b.data[0].embedding, [5, -0.25, 0.5]);
    const log = await gw.waitForAccessLog((l) => l.model === 'gem-emb' && l.upstream_format === 'gemini', 5000, 'gemini embeddings log');
    assert.equal(log.usage_source, 'estimated');
    assert.ok(log.prompt_tokens > 0);
    // token ids have no Gemini form: refused before anything goes upstream
    const n = up.seen.length;
    await assert.rejects(() => client.embeddings.create({ model: 'gem-emb', input: [[1, 2, 3]] }), (e) => e.status === 400 && e.param === 'input');
    assert.equal(up.seen.length, n);
  });

  it('completions: whole and streamed, usage chunk only when asked for', async () => {
    const r = await client.completions.create({ model: 'inst', prompt: 'Say hello', max_tokens: 5 });
    assert.equal(r.choices[0].text, 'Hello there');
    assert.equal(up.seen.at(-1).path, '/v1/completions');
    assert.equal(up.seen.at(-1).body.model, 'gpt-3.5-turbo-instruct');
    const s = await client.completions.create({ model: 'inst', prompt: 'Say hello', stream: true });
    let text = '';
    let usage = null;
    for await (const ch of s) {
      if (ch.choices.length) text += ch.choices[0].text;
      if (ch.usage) usage = ch.usage;
    }
    assert.equal(text, 'Hello there');
    assert.equal(usage, null, 'the caller did not ask for usage');
    assert.equal(up.seen.at(-1).body.stream_options.include_usage, true, 'tollgate asks for it upstream');
    const log = await gw.waitForAccessLog((l) => l.path === '/v1/completions' && l.stream === true, 5000, 'completions log');
    assert.equal(log.usage_source, 'provider');
    assert.equal(log.prompt_tokens, 4);
    assert.equal(log.completion_tokens, 2);
  });

  it('embeddings and completions to a provider without them: a 400 that says why', async () => {
    for (const call of [
      () => client.embeddings.create({ model: 'mock-claude', input: 'x' }),
      () => client.completions.create({ model: 'mock-claude', prompt: 'x' }),
      () => client.embeddings.create({ model: 'mock-1', input: 'x' }),
    ]) {
      await assert.rejects(call, (e) => {
        assert.equal(e.status, 400);
        assert.equal(e.code, 'unsupported_endpoint');
        assert.match(e.message, /has no \/(embeddings|completions) endpoint/);
        return true;
      });
    }
    await assert.rejects(() => client.embeddings.create({ model: 'emb' }), (e) => e.status === 400 && e.param === 'input');
  });

  it('models: OpenAI list, and Anthropic shape for callers that send anthropic-version', async () => {
    const list = await client.models.list();
    const ids = list.data.map((m) => m.id);
    assert.ok(ids.includes('mock-claude') && ids.includes('emb'));
    const r = await fetch(`http://127.0.0.1:${gw.port}/v1/models`, { headers: { 'x-api-key': KEY, 'anthropic-version': '2023-06-01' } });
    const j = await r.json();
    assert.equal(j.has_more, false);
    assert.equal(j.data[0].type, 'model');
    assert.equal(j.first_id, j.data[0].id);
    assert.equal(j.last_id, j.data.at(-1).id);
    assert.deepEqual(j.data.map((m) => m.id), ids);
  });

  it('count_tokens: the prompt counted as the meter counts it, no upstream call', async () => {
    const before = up.seen.length;
    const body = { model: 'mock-claude', system: 'You are terse.', messages: [{ role: 'user', content: 'Hello, world' }] };
    const r = await fetch(`http://127.0.0.1:${gw.port}/v1/messages/count_tokens`, {
      method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify(body),
    });
    assert.equal(r.status, 200);
    const j = await r.json();
    // OpenAI chat framing: 3 per message + role + text, 3 priming (meter.h)
    const enc = get_encoding('o200k_base');
    const n = (s) => enc.encode_ordinary(s).length;
    const want = 3 + n('system') + n('You are terse.') + 3 + n('user') + n('Hello, world') + 3;
    enc.free();
    assert.equal(j.input_tokens, want);
    assert.equal(r.headers.get('x-tollgate-tokenizer'), 'o200k_base');
    assert.equal(up.seen.length, before);
    const bad = await fetch(`http://127.0.0.1:${gw.port}/v1/messages/count_tokens`, {
      method: 'POST', headers: { 'x-api-key': KEY }, body: JSON.stringify({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }),
    });
    assert.equal(bad.status, 404);
    assert.equal((await bad.json()).error.type, 'not_found_error');
  });
});
