// anthropic_sdk.test.mjs - the official `@anthropic-ai/sdk` npm package,
// pointed at tollgate's POST /v1/messages, works whatever the upstream speaks:
// OpenAI (recorded fixtures), Gemini (recorded fixtures), the built-in mock in
// each format, and Anthropic itself (passthrough: the stream's bytes are the
// fixture's). Tool use comes back as tool_use blocks; errors as the SDK's
// typed errors.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Anthropic, { APIError, AuthenticationError, NotFoundError, RateLimitError, InternalServerError } from '@anthropic-ai/sdk';
import { startUpstream } from './lib/upstream.mjs';
import { startGateway, baseConfig, rawRequest, newRequestId, KEY, UPSTREAM_KEY, TLS_DIR } from './lib/gateway.mjs';
import { FIXTURES } from './lib/paths.mjs';
import { fixture, fixtureEvents, fixtureText, fixtureUsage, eventPayload, assertAccessLogShape, assertCleanShutdown } from './lib/expect.mjs';

const T = { timeout: 20000 };
const messages = [{ role: 'user', content: 'Hello!' }];

/** Anthropic stop_reason for an OpenAI finish_reason (the inverse mapping). */
const STOP_OF = { stop: 'end_turn', length: 'max_tokens', tool_calls: 'tool_use', content_filter: 'refusal' };

/** The tool calls of an OpenAI fixture stream: [{id, name, input}] by index. */
function openaiStreamCalls(rel) {
  const calls = [];
  for (const ev of fixtureEvents(rel)) {
    for (const tc of eventPayload(ev)?.choices?.[0]?.delta?.tool_calls ?? []) {
      calls[tc.index] ??= { id: '', name: '', args: '' };
      if (tc.id) calls[tc.index].id = tc.id;
      if (tc.function?.name) calls[tc.index].name += tc.function.name;
      if (tc.function?.arguments) calls[tc.index].args += tc.function.arguments;
    }
  }
  return calls.map((c) => ({ id: c.id, name: c.name, input: JSON.parse(c.args) }));
}

/** The finish_reason an OpenAI fixture stream ends with. */
function openaiStreamFinish(rel) {
  let f = null;
  for (const ev of fixtureEvents(rel)) f = eventPayload(ev)?.choices?.[0]?.finish_reason ?? f;
  return f;
}

/** Text and usage of a Gemini fixture (the last usageMetadata; output = candidates + thoughts). */
function geminiExpect(rel) {
  const chunks = rel.endsWith('.json') ? [JSON.parse(fixture(rel))] : fixtureEvents(rel).map(eventPayload);
  let text = '';
  let um = null;
  for (const c of chunks) {
    for (const p of c.candidates?.[0]?.content?.parts ?? []) if (typeof p.text === 'string' && !p.thought) text += p.text;
    if (c.usageMetadata) um = c.usageMetadata;
  }
  return { text, input: um.promptTokenCount, output: (um.candidatesTokenCount ?? 0) + (um.thoughtsTokenCount ?? 0) };
}

/** Usage of an Anthropic fixture stream: message_start, then the last
 * message_delta (cumulative); input counts cache writes and reads. */
function anthropicStreamUsage(rel) {
  const u = {};
  for (const ev of fixtureEvents(rel)) {
    const p = eventPayload(ev);
    if (p?.type === 'message_start') Object.assign(u, p.message.usage);
    if (p?.type === 'message_delta') Object.assign(u, p.usage);
  }
  return { input: u.input_tokens + (u.cache_creation_input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0), output: u.output_tokens };
}

/** Runs messages.stream(): {final, textEvents (the deltas of the `text` events), events}. */
async function streamed(client, params, options) {
  const s = client.messages.stream(params, options);
  const textEvents = [];
  const events = [];
  s.on('text', (delta) => textEvents.push(delta));
  s.on('streamEvent', (ev) => events.push(ev));
  const final = await s.finalMessage();
  return { final, textEvents, events };
}

const textOf = (msg) => msg.content.filter((b) => b.type === 'text').map((b) => b.text).join('');

describe('@anthropic-ai/sdk against tollgate', () => {
  let up;
  let gw;
  let client;
  const sdk = (apiKey) => new Anthropic({ baseURL: gw.url(''), apiKey, maxRetries: 0, timeout: 15000 });
  before(async () => {
    up = await startUpstream();
    gw = await startGateway(baseConfig(up.baseUrl, (cfg) => {
      const common = { api_key: UPSTREAM_KEY, ca_file: path.join(TLS_DIR, 'ca.crt'), timeouts: cfg.providers[0].timeouts };
      cfg.providers.push(
        { name: 'anth', type: 'anthropic', base_url: `https://localhost:${up.port}/v1`, ...common },
        { name: 'gem', type: 'gemini', base_url: `https://localhost:${up.port}/v1beta`, ...common },
        { name: 'mock-anth', type: 'mock', mock: { format: 'anthropic' } },
        { name: 'mock-gem', type: 'mock', mock: { format: 'gemini' } },
        { name: 'mock-oai', type: 'mock', mock: { format: 'openai' } },
      );
      cfg.models.push(
        { name: 'an/*', provider: 'anth' },
        { name: 'ge/*', provider: 'gem' },
        { name: 'mock-claude', provider: 'mock-anth' },
        { name: 'mock-gemini', provider: 'mock-gem' },
        { name: 'mock-openai', provider: 'mock-oai' },
      );
    }));
    client = sdk(KEY);
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
  });

  it('every recorded OpenAI and OpenRouter answer, whole and streamed, parses with the Anthropic SDK', T, async () => {
    const recorded = [];
    for (const dir of ['openai', 'openrouter']) {
      for (const f of fs.readdirSync(path.join(FIXTURES, dir)).sort()) {
        if (f.includes('error') || f.startsWith('embeddings') || f.startsWith('models')) continue;
        if (f.endsWith('.sse') || f.endsWith('_response.json') || /response_[a-z_]+\.json$/.test(f)) recorded.push(`${dir}/${f}`);
      }
    }
    assert.ok(recorded.length >= 10, `found ${recorded.length} recorded answers`);
    for (const rel of recorded) {
      const model = `fx/${rel.replace(/\.(sse|json)$/, '')}`;
      if (rel.endsWith('.sse')) {
        const events = fixtureEvents(rel).map(eventPayload).filter(Boolean);
        const finish = events.flatMap((j) => (j.choices ?? []).map((c) => c.finish_reason)).filter(Boolean)[0];
        const names = [];
        for (const j of events) for (const c of j.choices ?? []) for (const tc of c.delta?.tool_calls ?? []) if (tc.function?.name) names.push(tc.function.name);
        const msg = await client.messages.stream({ model, max_tokens: 100, messages }).finalMessage();
        assert.equal(textOf(msg), fixtureText(rel), `${rel}: text`);
        assert.equal(msg.stop_reason, names.length ? 'tool_use' : STOP_OF[finish], `${rel}: stop_reason`);
        assert.deepEqual(msg.content.filter((b) => b.type === 'tool_use').map((b) => b.name), names, `${rel}: tool calls`);
        assert.equal(msg.usage.output_tokens, fixtureUsage(rel).completion_tokens, `${rel}: output tokens`);
      } else {
        const j = JSON.parse(fixture(rel));
        const m = j.choices[0].message;
        const msg = await client.messages.create({ model, max_tokens: 100, messages });
        assert.equal(textOf(msg), m.content ?? '', `${rel}: text`);
        assert.equal(msg.stop_reason, STOP_OF[j.choices[0].finish_reason], `${rel}: stop_reason`);
        assert.deepEqual(msg.content.filter((b) => b.type === 'tool_use').map((b) => [b.name, b.input]),
          (m.tool_calls ?? []).map((t) => [t.function.name, JSON.parse(t.function.arguments)]), `${rel}: tool calls`);
        assert.equal(msg.usage.output_tokens, j.usage.completion_tokens, `${rel}: output tokens`);
      }
    }
  });

  async function assertLog(id, { upstream, stream, input, output }) {
    const log = await gw.accessLogFor(id);
    assertAccessLogShape(log);
    assert.equal(log.path, '/v1/messages');
    assert.equal(log.format, 'anthropic');
    assert.equal(log.upstream_format, upstream);
    assert.equal(log.stream, stream);
    assert.equal(log.status, 200);
    assert.equal(log.usage_source, 'provider');
    assert.equal(log.prompt_tokens, input);
    assert.equal(log.completion_tokens, output);
    return log;
  }

  /* --------------------------------------------------- OpenAI upstream */

  it('messages.create from openai/chat_completion_response: text, stop_reason, usage', T, async () => {
    const want = JSON.parse(fixture('openai/chat_completion_response.json'));
    const id = newRequestId('ant');
    const got = await client.messages.create({ model: 'fx/openai/chat_completion_response', max_tokens: 100, messages }, { headers: { 'x-request-id': id } })
      .catch((err) => err);
    const sent = await up.waitForRequestId(id);
    assert.equal(`${sent.method} ${sent.path}`, 'POST /v1/chat/completions', 'an OpenAI-format provider is called on its chat completions path');
    assert.ok(!(got instanceof Error), `messages.create failed: ${got?.message}`);
    const msg = got;
    assert.equal(msg.type, 'message');
    assert.equal(msg.role, 'assistant');
    assert.match(msg.id, /^msg_/);
    assert.deepEqual(msg.content, [{ type: 'text', text: want.choices[0].message.content }]);
    assert.equal(msg.stop_reason, STOP_OF[want.choices[0].finish_reason]);
    assert.equal(msg.usage.input_tokens, want.usage.prompt_tokens);
    assert.equal(msg.usage.output_tokens, want.usage.completion_tokens);
    await assertLog(id, { upstream: 'openai', stream: false, input: want.usage.prompt_tokens, output: want.usage.completion_tokens });
    const rec = sent;
    assert.equal(rec.headers.authorization, `Bearer ${UPSTREAM_KEY}`);
    assert.equal(rec.body.model, 'openai/chat_completion_response');
    assert.deepEqual(rec.body.messages, [{ role: 'user', content: 'Hello!' }]);
  });

  it('messages.stream from openai/chat_stream: text events, finalMessage, usage', T, async () => {
    const usage = fixtureUsage('openai/chat_stream.sse');
    const id = newRequestId('ant');
    const { final, textEvents, events } = await streamed(client, { model: 'fx/openai/chat_stream', max_tokens: 100, messages }, { headers: { 'x-request-id': id } });
    const want = fixtureText('openai/chat_stream.sse');
    assert.equal(textEvents.join(''), want);
    assert.ok(textEvents.length > 1, 'text arrives in several deltas');
    assert.equal(textOf(final), want);
    assert.equal(final.content.length, 1);
    assert.equal(final.stop_reason, STOP_OF[openaiStreamFinish('openai/chat_stream.sse')]);
    assert.equal(final.usage.input_tokens, usage.prompt_tokens);
    assert.equal(final.usage.output_tokens, usage.completion_tokens);
    assert.equal(events[0].type, 'message_start');
    assert.equal(events.at(-1).type, 'message_stop');
    await assertLog(id, { upstream: 'openai', stream: true, input: usage.prompt_tokens, output: usage.completion_tokens });
    const rec = await up.waitForRequestId(id);
    assert.equal(rec.body.stream, true);
    assert.equal(rec.body.stream_options?.include_usage, true, 'usage asked for upstream');
  });

  it('system, max_tokens, stop_sequences and temperature become OpenAI fields', T, async () => {
    const id = newRequestId('ant');
    await client.messages.create({
      model: 'fx/openai/chat_completion_response', max_tokens: 64, system: 'You are terse.', temperature: 0.3,
      stop_sequences: ['###'], messages,
    }, { headers: { 'x-request-id': id } });
    const body = (await up.waitForRequestId(id)).body;
    assert.deepEqual(body.messages, [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Hello!' }]);
    assert.equal(body.max_tokens ?? body.max_completion_tokens, 64);
    assert.equal(body.temperature, 0.3);
    assert.deepEqual([body.stop].flat(), ['###']);
  });

  /* ------------------------------------------------------ tool use */

  const weatherTool = { name: 'get_current_weather', description: 'Weather in a city', input_schema: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] } };

  it('tool use from openai/chat_completion_tool_call_response: a tool_use block with the parsed input', T, async () => {
    const want = JSON.parse(fixture('openai/chat_completion_tool_call_response.json'));
    const call = want.choices[0].message.tool_calls[0];
    const id = newRequestId('ant');
    const msg = await client.messages.create({ model: 'fx/openai/chat_completion_tool_call_response', max_tokens: 100, messages, tools: [weatherTool] }, { headers: { 'x-request-id': id } });
    assert.equal(msg.stop_reason, 'tool_use');
    assert.deepEqual(msg.content, [{ type: 'tool_use', id: call.id, name: call.function.name, input: JSON.parse(call.function.arguments) }]);
    assert.equal(msg.usage.input_tokens, want.usage.prompt_tokens);
    assert.equal(msg.usage.output_tokens, want.usage.completion_tokens);
    const body = (await up.waitForRequestId(id)).body;
    assert.deepEqual(body.tools, [{ type: 'function', function: { name: 'get_current_weather', description: 'Weather in a city', parameters: weatherTool.input_schema } }]);
  });

  it('tool use streamed from openai/chat_stream_tool_call: input_json deltas reassemble, stop_reason tool_use', T, async () => {
    const want = openaiStreamCalls('openai/chat_stream_tool_call.sse');
    const { final, events } = await streamed(client, { model: 'fx/openai/chat_stream_tool_call', max_tokens: 100, messages, tools: [weatherTool] });
    assert.equal(final.stop_reason, 'tool_use');
    assert.deepEqual(final.content.filter((b) => b.type === 'tool_use').map(({ id, name, input }) => ({ id, name, input })), want);
    assert.equal(want[0].name, 'get_capital');
    assert.ok(events.filter((e) => e.type === 'content_block_delta' && e.delta.type === 'input_json_delta').length > 1, 'arguments arrive in fragments');
  });

  it('two parallel tool calls become two tool_use blocks', T, async () => {
    const want = openaiStreamCalls('openai/chat_stream_parallel_tool_calls.sse');
    assert.equal(want.length, 2);
    const { final } = await streamed(client, { model: 'fx/openai/chat_stream_parallel_tool_calls', max_tokens: 100, messages });
    assert.deepEqual(final.content.map(({ type, id, name, input }) => ({ type, id, name, input })), want.map((c) => ({ type: 'tool_use', ...c })));
  });

  it('tool round trip to an OpenAI upstream: tool_use -> tool_calls, tool_result -> role tool', T, async () => {
    const first = await client.messages.create({ model: 'fx/openai/chat_completion_tool_call_response', max_tokens: 100, messages, tools: [weatherTool] });
    const use = first.content[0];
    const id = newRequestId('ant');
    await client.messages.create({
      model: 'fx/openai/chat_completion_response', max_tokens: 100, tools: [weatherTool],
      messages: [...messages, { role: 'assistant', content: first.content }, { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: '12 C, rain' }] }],
    }, { headers: { 'x-request-id': id } });
    const body = (await up.waitForRequestId(id)).body;
    assert.equal(body.messages.length, 3);
    const a = body.messages[1];
    assert.equal(a.role, 'assistant');
    assert.equal(a.tool_calls.length, 1);
    assert.equal(a.tool_calls[0].id, use.id);
    assert.equal(a.tool_calls[0].type, 'function');
    assert.equal(a.tool_calls[0].function.name, use.name);
    assert.deepEqual(JSON.parse(a.tool_calls[0].function.arguments), use.input);
    assert.equal(body.messages[2].role, 'tool');
    assert.equal(body.messages[2].tool_call_id, use.id);
    assert.equal([body.messages[2].content].flat().map((p) => (typeof p === 'string' ? p : p.text)).join(''), '12 C, rain');
  });

  /* ----------------------------------------------------- Gemini upstream */

  it('Gemini upstream (TLS mock): create and stream, text and usage from the fixtures', T, async () => {
    let want = geminiExpect('gemini/generate_content_response.json');
    let id = newRequestId('ant');
    const msg = await client.messages.create({ model: 'ge/gemini/generate_content_response', max_tokens: 100, messages }, { headers: { 'x-request-id': id } });
    assert.deepEqual(msg.content, [{ type: 'text', text: want.text }]);
    assert.equal(msg.stop_reason, 'end_turn');
    assert.equal(msg.usage.input_tokens, want.input);
    assert.equal(msg.usage.output_tokens, want.output);
    await assertLog(id, { upstream: 'gemini', stream: false, input: want.input, output: want.output });
    assert.deepEqual((await up.waitForRequestId(id)).body.generationConfig, { maxOutputTokens: 100 });

    want = geminiExpect('gemini/stream_generate_content.sse');
    id = newRequestId('ant');
    const { final, textEvents } = await streamed(client, { model: 'ge/gemini/stream_generate_content', max_tokens: 100, messages }, { headers: { 'x-request-id': id } });
    assert.equal(textEvents.join(''), want.text);
    assert.equal(textOf(final), want.text);
    assert.equal(final.stop_reason, 'end_turn');
    assert.equal(final.usage.input_tokens, 18);
    assert.equal(final.usage.output_tokens, 80 + 35, 'thoughts are output');
    await assertLog(id, { upstream: 'gemini', stream: true, input: 18, output: 115 });
    const rec = await up.waitForRequestId(id);
    assert.match(rec.path, /^\/v1beta\/models\/gemini%2Fstream_generate_content:streamGenerateContent\?alt=sse$/);
  });

  it('Gemini function call streamed to the Anthropic SDK: tool_use, and the signature comes back upstream', T, async () => {
    const tool = { name: 'get_country', description: '', input_schema: { type: 'object', properties: {} } };
    const q = { role: 'user', content: 'What is the capital of the user country? Call the tool' };
    const { final } = await streamed(client, { model: 'ge/gemini/stream_function_call', max_tokens: 100, messages: [q], tools: [tool] });
    assert.equal(final.stop_reason, 'tool_use');
    const use = final.content.find((b) => b.type === 'tool_use');
    assert.equal(use.name, 'get_country');
    assert.deepEqual(use.input, {});
    assert.match(use.id, /^[A-Za-z0-9_-]+$/, 'an id Anthropic accepts');
    const id = newRequestId('ant');
    const { final: answer } = await streamed(client, {
      model: 'ge/gemini/stream_after_function_response', max_tokens: 100, tools: [tool],
      messages: [q, { role: 'assistant', content: final.content }, { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: 'Mexico' }] }],
    }, { headers: { 'x-request-id': id } });
    assert.equal(textOf(answer), geminiExpect('gemini/stream_after_function_response.sse').text);
    const body = (await up.waitForRequestId(id)).body;
    const sig = eventPayload(fixtureEvents('gemini/stream_function_call.sse')[0]).candidates[0].content.parts[0].thoughtSignature;
    assert.equal(body.contents[1].parts[0].thoughtSignature, sig);
    assert.equal(body.contents[2].parts[0].functionResponse.name, 'get_country');
    assert.equal(body.contents[2].parts[0].functionResponse.id, body.contents[1].parts[0].functionCall.id);
  });

  /* ----------------------------------------------------- built-in mock */

  it('built-in mock speaking Gemini and OpenAI (and Anthropic): the text the OpenAI mock gives', T, async () => {
    const ref = await rawRequest(gw.port, {
      method: 'POST', path: '/v1/chat/completions', headers: { authorization: `Bearer ${KEY}` },
      body: { model: 'mock-1', messages: [{ role: 'user', content: 'Count to three.' }], max_tokens: 9 },
    });
    assert.equal(ref.status, 200);
    const refText = ref.json().choices[0].message.content;
    assert.ok(refText.length > 0);
    for (const [model, upstream] of [['mock-gemini', 'gemini'], ['mock-openai', 'openai'], ['mock-claude', 'anthropic']]) {
      const params = { model, max_tokens: 9, messages: [{ role: 'user', content: 'Count to three.' }] };
      const id = newRequestId('ant');
      const msg = await client.messages.create(params, { headers: { 'x-request-id': id } });
      assert.equal(textOf(msg), refText, `${model}: text`);
      assert.equal(msg.stop_reason, 'max_tokens', model);
      assert.equal(msg.usage.output_tokens, 9, model);
      assert.ok(msg.usage.input_tokens > 0, model);
      await assertLog(id, { upstream, stream: false, input: msg.usage.input_tokens, output: 9 });
      const { final, textEvents } = await streamed(client, params);
      assert.equal(textEvents.join(''), refText, `${model}: streamed text`);
      assert.equal(final.stop_reason, 'max_tokens');
      assert.equal(final.usage.output_tokens, 9);
      assert.equal(final.usage.input_tokens, msg.usage.input_tokens);
    }
  });

  /* --------------------------------------------- Anthropic passthrough */

  it('passthrough: the stream is the fixture byte for byte, the body only gets the provider model', T, async () => {
    const id = newRequestId('pass');
    const sent = { model: 'an/anthropic/messages_stream', max_tokens: 1024, stream: true, messages, metadata: { user_id: 'u-1' } };
    const r = await rawRequest(gw.port, {
      method: 'POST', path: '/v1/messages', body: sent,
      headers: { 'x-api-key': KEY, 'anthropic-version': '2023-06-01', 'anthropic-beta': 'some-beta-2025', 'x-request-id': id },
    }, { timeoutMs: 10000 });
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^text\/event-stream/);
    assert.ok(r.body.equals(fixture('anthropic/messages_stream.sse')), `stream differs from the fixture:\n${r.text()}`);
    const rec = await up.waitForRequestId(id);
    assert.deepEqual(rec.body, { ...sent, model: 'anthropic/messages_stream' });
    assert.equal(rec.headers['x-api-key'], UPSTREAM_KEY, 'the provider key, not the caller key');
    assert.equal(rec.headers['anthropic-version'], '2023-06-01');
    assert.equal(rec.headers['anthropic-beta'], 'some-beta-2025', 'anthropic-beta passed on');
    const u = anthropicStreamUsage('anthropic/messages_stream.sse');
    await assertLog(id, { upstream: 'anthropic', stream: true, input: u.input, output: u.output });
  });

  it('passthrough with the SDK: messages.stream and messages.create, usage logged (cache included)', T, async () => {
    let id = newRequestId('pass');
    const { final, textEvents } = await streamed(client, { model: 'an/anthropic/messages_stream_sdk_basic', max_tokens: 100, messages }, { headers: { 'x-request-id': id } });
    assert.deepEqual(textEvents, ['Hello', ' there', '!']);
    assert.equal(textOf(final), 'Hello there!');
    assert.equal(final.id, 'msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK', 'the upstream id, untouched');
    assert.equal(final.usage.output_tokens, 6);
    const u = anthropicStreamUsage('anthropic/messages_stream_sdk_basic.sse');
    assert.deepEqual(u, { input: 11, output: 6 });
    await assertLog(id, { upstream: 'anthropic', stream: true, input: u.input, output: u.output });

    id = newRequestId('pass');
    const r = await rawRequest(gw.port, {
      method: 'POST', path: '/v1/messages', body: { model: 'an/anthropic/messages_prompt_cache_response', max_tokens: 100, messages },
      headers: { 'x-api-key': KEY, 'anthropic-version': '2023-06-01', 'x-request-id': id },
    });
    assert.ok(r.body.equals(fixture('anthropic/messages_prompt_cache_response.json')), 'non-stream bytes relayed');
    const log = await assertLog(id, { upstream: 'anthropic', stream: false, input: 3 + 418 + 1111, output: 33 });
    assert.equal(log.cached_tokens, 1111);
    assert.equal(log.cache_write_tokens, 418);

    const msg = await client.messages.create({ model: 'an/anthropic/messages_tool_use_response', max_tokens: 100, messages });
    assert.deepEqual(msg.content, JSON.parse(fixture('anthropic/messages_tool_use_response.json')).content);
    assert.equal(msg.stop_reason, 'tool_use');
  });

  /* ------------------------------------------------------------ errors */

  it('OpenAI 429 fixture -> RateLimitError 429 with the provider message', T, async () => {
    const want = JSON.parse(fixture('openai/error_429.json')).error.message;
    await assert.rejects(client.messages.create({ model: 'fx/openai/error_429', max_tokens: 10, messages }), (err) => {
      assert.ok(err instanceof RateLimitError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 429);
      assert.equal(err.error?.type, 'error');
      assert.equal(err.error?.error?.type, 'rate_limit_error');
      assert.equal(err.error?.error?.message, want);
      return true;
    });
    // Gemini's 429 too
    await assert.rejects(client.messages.create({ model: 'ge/gemini/error_429_resource_exhausted', max_tokens: 10, messages }), RateLimitError);
  });

  it('a bad key -> AuthenticationError 401; an unknown model -> NotFoundError 404', T, async () => {
    await assert.rejects(sdk('tg-wrong-key-0123456789abcdef').messages.create({ model: 'mock-openai', max_tokens: 10, messages }), (err) => {
      assert.ok(err instanceof AuthenticationError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 401);
      assert.equal(err.error?.error?.type, 'authentication_error');
      return true;
    });
    const n = up.requests.length;
    await assert.rejects(client.messages.create({ model: 'no-such-model', max_tokens: 10, messages }), (err) => {
      assert.ok(err instanceof NotFoundError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 404);
      assert.equal(err.error?.error?.type, 'not_found_error');
      assert.match(err.error.error.message, /no-such-model/);
      return true;
    });
    assert.equal(up.requests.length, n, 'nothing sent upstream');
  });

  it('Anthropic 529 relayed to an Anthropic caller; an OpenRouter mid-stream error raises in messages.stream', T, async () => {
    await assert.rejects(client.messages.create({ model: 'an/anthropic/error_529_overloaded_error', max_tokens: 10, messages }), (err) => {
      assert.ok(err instanceof InternalServerError, `got ${err?.constructor?.name}`);
      assert.equal(err.status, 529);
      assert.equal(err.error?.error?.type, 'overloaded_error');
      return true;
    });
    const s = client.messages.stream({ model: 'fx/openrouter/chat_stream_midstream_error', max_tokens: 100, messages });
    await assert.rejects(s.finalMessage(), (err) => {
      assert.ok(err instanceof APIError, `got ${err?.constructor?.name}: ${err?.message}`);
      const midstream = fixtureEvents('openrouter/chat_stream_midstream_error.sse').map(eventPayload).find((p) => p?.error);
      assert.match(err.message, new RegExp(midstream.error.message));
      return true;
    });
  });

  it('exits 0 on SIGTERM, with no sanitizer report', { timeout: 20000 }, async () => {
    await assertCleanShutdown(gw);
  });
});
