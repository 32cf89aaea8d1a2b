// metering.test.mjs - every call is priced, also when the provider never
// says how many tokens it used: streams cut by the upstream after every
// event, a client that hangs up, an upstream that goes silent. The access
// log then carries the meter's counts (usage_source "estimated") and a cost;
// the expected counts come from the npm package tiktoken (the oracle) run on
// the text the gateway relayed.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { get_encoding } from 'tiktoken';
import { startUpstream } from './lib/upstream.mjs';
import { startGateway, baseConfig, RawConn, chatRequest, newRequestId } from './lib/gateway.mjs';
import { fixtureEvents, eventPayload } from './lib/expect.mjs';

const PRICE_IN = 150000000n; // nano-USD per 1M: "0.15"
const PRICE_OUT = 600000000n; // "0.60"

/** Exact cost as tollgate computes it: one rounding, half up, to the nano. */
function costUsd(prompt, completion) {
  const num = BigInt(prompt) * PRICE_IN + BigInt(completion) * PRICE_OUT;
  const nano = (num + 500000n) / 1000000n;
  const s = nano.toString().padStart(10, '0');
  let frac = s.slice(-9).replace(/0+$/, '');
  if (frac.length < 2) frac = frac.padEnd(2, '0');
  return `${s.slice(0, -9)}.${frac}`;
}

/** Sends one chat request on a fresh connection, expects `status`, and
 * returns the call's access-log line. */
async function callAndLog(gw, tag, model, { stream = true, status = 200 } = {}) {
  const id = newRequestId(tag);
  const conn = await RawConn.open(gw.port);
  try {
    await conn.write(chatRequest({ model, stream, headers: { 'x-request-id': id } }));
    const r = await conn.next(10000);
    assert.equal(r.status, status);
  } finally {
    conn.destroy();
  }
  return gw.accessLogFor(id);
}

const enc = get_encoding('o200k_base');
after(() => enc.free());

/** Output text fields of the events, as the meter separates them. */
function fieldsOf(events) {
  const segs = [];
  let last = null;
  let choices = 0;
  let tools = 0;
  for (const ev of events) {
    const j = eventPayload(ev);
    if (!j || !Array.isArray(j.choices)) continue;
    for (const [pos, c] of j.choices.entries()) {
      const ci = c.index ?? pos;
      const d = c.delta ?? {};
      const add = (kind, tool, text) => {
        choices = Math.max(choices, ci + 1); // a message counts once it has text (even "")
        const key = `${kind}/${ci}/${tool}`;
        if (key !== last) segs.push('');
        last = key;
        segs[segs.length - 1] += text;
      };
      for (const [k, v] of Object.entries(d)) {
        if (k === 'content' && typeof v === 'string') add('content', -1, v);
        else if ((k === 'reasoning' || k === 'reasoning_content') && typeof v === 'string') add('reasoning', -1, v);
        else if (k === 'refusal' && typeof v === 'string') add('refusal', -1, v);
        else if (k === 'tool_calls' && Array.isArray(v)) {
          for (const [tp, tc] of v.entries()) {
            const ti = tc.index ?? tp;
            if (typeof tc.function?.name === 'string') {
              tools++;
              add('name', ti, tc.function.name);
            }
            if (typeof tc.function?.arguments === 'string') add('args', ti, tc.function.arguments);
          }
        }
      }
    }
  }
  return { segs, choices, tools };
}

/** What the meter must report for these relayed events (meter.h framing). */
function expectedCompletion(events) {
  const { segs, choices, tools } = fieldsOf(events);
  const text = segs.reduce((n, s) => n + enc.encode_ordinary(s).length, 0);
  if (choices === 0 && text === 0) return 0;
  return text + 1 * Math.max(choices, 1) + 4 * tools;
}

describe('metering', () => {
  let up;
  let gw;
  before(async () => {
    up = await startUpstream();
    gw = await startGateway(
      baseConfig(up.baseUrl, (cfg) => {
        cfg.models.push({ name: 'priced/*', provider: 'up', price: { input: '0.15', output: '0.60' } });
        cfg.providers.push({ ...cfg.providers[0], name: 'quiet', timeouts: { ...cfg.providers[0].timeouts, idle: '1s' } });
        cfg.models.push({ name: 'quiet/*', provider: 'quiet', price: { input: '0.15', output: '0.60' } });
      }),
    );
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
  });

  it('provider usage is the truth; the meter is logged beside it, with cost and price', async () => {
    const log = await callAndLog(gw, 'usage', 'priced/openai/chat_stream');
    assert.equal(log.usage_source, 'provider');
    assert.equal(log.prompt_tokens, 78);
    assert.equal(log.completion_tokens, 9);
    const events = fixtureEvents('openai/chat_stream.sse');
    assert.equal(log.meter_completion_tokens, expectedCompletion(events));
    assert.equal(log.meter_completion_tokens, 9, 'text-only OpenAI stream: the meter equals the provider');
    assert.ok(log.meter_prompt_tokens > 0);
    assert.equal(log.tokenizer, 'o200k_base');
    assert.equal(log.cost_usd, costUsd(78, 9));
    assert.equal(log.cost_usd, '0.0000171');
    assert.equal(log.price_usd, log.cost_usd, 'no markup: price = cost');
  });

  for (const fx of ['openai/chat_stream', 'openai/chat_stream_tool_call', 'openai/chat_stream_parallel_tool_calls']) {
    it(`${fx}: cut by the upstream after every event, billed on the meter (estimated)`, { timeout: 120000 }, async () => {
      const events = fixtureEvents(`${fx}.sse`);
      let end = 0;
      let checked = 0;
      for (let k = 1; k < events.length; k++) {
        end += Buffer.byteLength(events[k - 1]);
        const relayed = events.slice(0, k);
        if (relayed.some((ev) => eventPayload(ev)?.usage)) break; // usage arrived: not a cut any more
        const log = await callAndLog(gw, `cut${k}`, `priced/${fx}?reset=${end}`);
        const want = expectedCompletion(relayed);
        assert.equal(log.usage_source, 'estimated', `cut after ${k} events`);
        assert.equal(log.completion_tokens, want, `cut after ${k} events: completion tokens of the relayed text`);
        assert.equal(log.meter_completion_tokens, want);
        assert.equal(log.prompt_tokens, log.meter_prompt_tokens);
        assert.ok(log.prompt_tokens > 0);
        assert.equal(log.cost_usd, costUsd(log.prompt_tokens, log.completion_tokens), `cost after ${k} events`);
        checked++;
      }
      assert.ok(checked >= 3, `checked ${checked} cut points`);
    });
  }

  it('a client that hangs up mid-stream: 499, the upstream closed, billed on what was relayed', { timeout: 20000 }, async () => {
    const events = fixtureEvents('openai/chat_stream.sse');
    const k = 4;
    const end = events.slice(0, k).reduce((n, e) => n + Buffer.byteLength(e), 0);
    const id = newRequestId('gone');
    const conn = await RawConn.open(gw.port);
    await conn.write(chatRequest({ model: `priced/openai/chat_stream?stall=${end}`, stream: true, headers: { 'x-request-id': id } }));
    const r = await conn.nextHead(10000);
    assert.equal(r.status, 200);
    const rec = await up.waitFor(() => {
      const q = up.requests.find((x) => x.headers['x-request-id'] === id);
      return q && q.outcome === 'stalled' && q;
    }, 5000, 'the upstream to stall');
    // every byte the upstream sent reached the client; then the client leaves
    await conn.waitUntil(() => r.bodyLength >= end, 5000, 'the relayed events');
    const sock = up.socketOf(rec);
    conn.destroy();
    await up.waitFor(() => sock.closedAt !== null, 2000, 'tollgate to close the upstream connection');
    const log = await gw.accessLogFor(id);
    assert.equal(log.status, 499);
    assert.equal(log.usage_source, 'estimated');
    assert.equal(log.completion_tokens, expectedCompletion(events.slice(0, k)));
    assert.equal(log.cost_usd, costUsd(log.prompt_tokens, log.completion_tokens));
  });

  it('an upstream that goes silent mid-stream (idle timeout): billed on what was relayed', { timeout: 20000 }, async () => {
    const events = fixtureEvents('openai/chat_stream_tool_call.sse');
    const k = 3;
    const end = events.slice(0, k).reduce((n, e) => n + Buffer.byteLength(e), 0);
    const log = await callAndLog(gw, 'quiet', `quiet/openai/chat_stream_tool_call?stall=${end}`);
    assert.equal(log.usage_source, 'estimated');
    assert.match(log.error ?? '', /idle|timeout/);
    assert.equal(log.completion_tokens, expectedCompletion(events.slice(0, k)));
    assert.equal(log.cost_usd, costUsd(log.prompt_tokens, log.completion_tokens));
  });

  it('an upstream error is not billed', async () => {
    const log = await callAndLog(gw, 'err', 'priced/openai/error_429', { stream: false, status: 429 });
    assert.equal(log.usage_source, 'none');
    assert.equal(log.prompt_tokens, 0);
    assert.equal(log.cost_usd, null);
  });
});

describe('metering without tokenizer data', () => {
  let up;
  let gw;
  before(async () => {
    up = await startUpstream();
    gw = await startGateway(
      baseConfig(up.baseUrl, (cfg) => {
        cfg.tokenizer_dir = '/nonexistent/tollgate-tokenizer';
        cfg.models.push({ name: 'priced/*', provider: 'up', price: { input: '0.15', output: '0.60' } });
      }),
    );
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
  });

  it('starts with a warning and bills cut streams on a flagged bytes/4 estimate', { timeout: 20000 }, async () => {
    await gw.waitForStderr(/tokenizer data incomplete/, 5000);
    const events = fixtureEvents('openai/chat_stream.sse');
    const k = 5;
    const end = events.slice(0, k).reduce((n, e) => n + Buffer.byteLength(e), 0);
    const log = await callAndLog(gw, 'nodata', `priced/openai/chat_stream?reset=${end}`);
    const { segs } = fieldsOf(events.slice(0, k));
    const bytes = segs.reduce((n, x) => n + Buffer.byteLength(x), 0);
    assert.equal(log.usage_source, 'estimated');
    assert.equal(log.tokenizer, 'bytes/4');
    assert.equal(log.tokenizer_exact, false);
    assert.equal(log.completion_tokens, Math.ceil(bytes / 4) + 1);
    assert.ok(log.prompt_tokens > 0);
    assert.equal(log.cost_usd, costUsd(log.prompt_tokens, log.completion_tokens));
  });
});
