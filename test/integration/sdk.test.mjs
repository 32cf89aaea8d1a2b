// sdk.test.mjs - the official `openai` npm package, pointed at tollgate,
// works as it does against OpenAI: completions, streams with and without
// usage, and typed errors.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI, { AuthenticationError, PermissionDeniedError, NotFoundError, RateLimitError } from 'openai';
import { startUpstream } from './lib/upstream.mjs';
import { startGateway, baseConfig, KEY, LIMITED_KEY } from './lib/gateway.mjs';
import { fixture, fixtureEvents, fixtureText, fixtureUsage, eventPayload, assertCleanShutdown } from './lib/expect.mjs';

const T = { timeout: 20000 };
const messages = [{ role: 'user', content: 'Say hello.' }];

describe('openai SDK against tollgate', () => {
  let up;
  let gw;
  let client;
  const sdk = (apiKey) => new OpenAI({ baseURL: `${gw.url('/v1')}`, apiKey, maxRetries: 0, timeout: 15000 });
  before(async () => {
    up = await startUpstream();
    gw = await startGateway(baseConfig(up.baseUrl));
    client = sdk(KEY);
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
  });

  it('chat.completions.create against the mock provider', T, async () => {
    const a = await client.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'Count to three.' }] });
    assert.equal(a.object, 'chat.completion');
    assert.equal(a.choices.length, 1);
    assert.equal(a.choices[0].message.role, 'assistant');
    assert.equal(typeof a.choices[0].message.content, 'string');
    assert.ok(a.choices[0].message.content.length > 0, 'some text');
    assert.ok(['stop', 'length'].includes(a.choices[0].finish_reason), `finish_reason ${a.choices[0].finish_reason}`);
    assert.ok(a.usage.prompt_tokens > 0 && a.usage.completion_tokens > 0, JSON.stringify(a.usage));
    assert.equal(a.usage.total_tokens, a.usage.prompt_tokens + a.usage.completion_tokens);
    const b = await client.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'Count to three.' }] });
    assert.equal(b.choices[0].message.content, a.choices[0].message.content, 'the mock answers the same request the same way');
  });

  it('chat.completions.create relayed from the recorded OpenAI response', T, async () => {
    const res = await client.chat.completions.create({ model: 'fx/openai/chat_completion_response', messages });
    assert.deepEqual(JSON.parse(JSON.stringify(res)), JSON.parse(fixture('openai/chat_completion_response.json')));
    assert.equal(res.choices[0].message.content, 'Hello! How can I assist you today?');
  });

  it('stream without stream_options: the SDK never sees a usage chunk', T, async () => {
    const stream = await client.chat.completions.create({ model: 'fx/openai/chat_stream', messages, stream: true });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert.ok(chunks.every((c) => c.choices.length > 0 && c.usage == null), 'no usage on any chunk');
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.equal(text, fixtureText('openai/chat_stream.sse'));
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
    // one SDK chunk per fixture event, minus the usage chunk and [DONE]
    assert.equal(chunks.length, fixtureEvents('openai/chat_stream.sse').length - 2);
  });

  it('stream with include_usage: the last chunk carries the usage', T, async () => {
    const stream = await client.chat.completions.create({
      model: 'fx/openai/chat_stream', messages, stream: true, stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, fixtureUsage('openai/chat_stream.sse'));
    assert.equal(chunks.slice(0, -1).filter((c) => c.usage).length, 0, 'only the last chunk has usage');
    assert.equal(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''), fixtureText('openai/chat_stream.sse'));
  });

  it('stream of tool-call fragments reassembles into the recorded arguments', T, async () => {
    const stream = await client.chat.completions.create({ model: 'fx/openai/chat_stream_tool_call', messages, stream: true });
    let args = '';
    let name = null;
    for await (const c of stream) {
      for (const tc of c.choices[0]?.delta?.tool_calls ?? []) {
        name = tc.function?.name ?? name;
        args += tc.function?.arguments ?? '';
      }
    }
    let want = '';
    for (const ev of fixtureEvents('openai/chat_stream_tool_call.sse')) {
      for (const tc of eventPayload(ev)?.choices?.[0]?.delta?.tool_calls ?? []) want += tc.function?.arguments ?? '';
    }
    assert.equal(name, 'get_capital');
    assert.equal(args, want);
    assert.doesNotThrow(() => JSON.parse(args));
  });

  it('stream from the mock provider ends with a usage chunk when asked', T, async () => {
    const stream = await client.chat.completions.create({
      model: 'mock-1', messages, stream: true, stream_options: { include_usage: true }, max_tokens: 8,
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.ok(text.length > 0);
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.ok(last.usage.completion_tokens > 0 && last.usage.completion_tokens <= 8, JSON.stringify(last.usage));
  });

  it('a bad key surfaces as openai.AuthenticationError', T, async () => {
    const bad = sdk('tg-wrong-key-0123456789abcdef');
    await assert.rejects(bad.chat.completions.create({ model: 'mock-1', messages }), (err) => {
      assert.ok(err instanceof AuthenticationError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.ok(err instanceof OpenAI.AuthenticationError);
      assert.equal(err.status, 401);
      assert.equal(typeof err.error?.message, 'string');
      assert.ok(err.headers.get('x-request-id'), 'the error carries a request id');
      return true;
    });
  });

  it('other errors map to their SDK classes (403, 404, relayed 429)', T, async () => {
    await assert.rejects(sdk(LIMITED_KEY).chat.completions.create({ model: 'fx-chat', messages }), PermissionDeniedError);
    await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages }), (err) => {
      assert.ok(err instanceof NotFoundError);
      assert.equal(err.code, 'model_not_found');
      return true;
    });
    await assert.rejects(client.chat.completions.create({ model: 'fx/openai/error_429', messages }), (err) => {
      assert.ok(err instanceof RateLimitError);
      assert.equal(err.code, 'rate_limit_exceeded');
      return true;
    });
  });

  it('models.list shows the aliases of the key', T, async () => {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    assert.ok(ids.includes('fx-chat') && ids.includes('mock-1'), `ids: ${ids}`);
    const limited = [];
    for await (const m of sdk(LIMITED_KEY).models.list()) limited.push(m.id);
    assert.deepEqual(limited, ['mock-1']);
  });

  it('exits 0 on SIGTERM, with no sanitizer report', { timeout: 20000 }, async () => {
    await assertCleanShutdown(gw);
  });
});
