// expect.mjs - what the client should see, computed from the fixture files
// alone (not from anything the mock upstream or tollgate reports), and the
// shape checks shared by the test files.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { FIXTURES } from './paths.mjs';

/** The raw bytes of a fixture, e.g. fixture('openai/chat_stream.sse'). */
export function fixture(rel) {
  return fs.readFileSync(path.join(FIXTURES, rel));
}

/**
 * A fixture SSE stream cut on blank lines: each event's text with its "\n\n".
 * Asserts the file is whole events (ends with a blank line).
 */
export function fixtureEvents(rel) {
  const text = fixture(rel).toString('utf8');
  const parts = text.split('\n\n');
  assert.equal(parts.at(-1), '', `${rel} ends with a blank line`);
  return parts.slice(0, -1).map((p) => `${p}\n\n`);
}

/** The JSON of one `data: {...}` event, or null (comments, [DONE]). */
export function eventPayload(ev) {
  const line = ev.split('\n').find((l) => l.startsWith('data: '));
  if (!line || line === 'data: [DONE]') return null;
  return JSON.parse(line.slice(6));
}

/** OpenAI's extra usage chunk: `"choices":[]` plus a usage object. */
export function isUsageOnly(ev) {
  const j = eventPayload(ev);
  return j !== null && Array.isArray(j.choices) && j.choices.length === 0 && j.usage != null;
}

/**
 * The bytes a caller must get for a relayed fixture stream: all of it when it
 * asked for usage, else everything but the usage-only chunk.
 */
export function expectedStream(rel, askedUsage) {
  const events = fixtureEvents(rel);
  return Buffer.from((askedUsage ? events : events.filter((ev) => !isUsageOnly(ev))).join(''), 'utf8');
}

/** The usage the fixture stream reports (the last event carrying a usage object). */
export function fixtureUsage(rel) {
  let usage = null;
  for (const ev of fixtureEvents(rel)) {
    const j = eventPayload(ev);
    if (j && j.usage) usage = j.usage;
  }
  assert.ok(usage, `${rel} carries usage`);
  return usage;
}

/** The assistant text of a fixture stream: every delta.content concatenated. */
export function fixtureText(rel) {
  let text = '';
  for (const ev of fixtureEvents(rel)) {
    const j = eventPayload(ev);
    for (const c of j?.choices ?? []) if (typeof c.delta?.content === 'string') text += c.delta.content;
  }
  return text;
}

/**
 * Asserts an OpenAI-shaped error response {"error":{message,type,param,code}}
 * with the given status; returns the inner error object.
 */
export function assertOpenAiError(r, status, { code, type } = {}) {
  const body = r.text();
  assert.equal(r.status, status, `status ${r.status}, expected ${status}; body: ${body.slice(0, 500)}`);
  assert.match(r.headers['content-type'] ?? '', /^application\/json/, 'error content-type');
  let j;
  try {
    j = JSON.parse(body);
  } catch {
    assert.fail(`error body is not JSON: ${JSON.stringify(body.slice(0, 300))}`);
  }
  assert.deepEqual(Object.keys(j), ['error'], `top-level keys of ${body}`);
  const e = j.error;
  for (const k of ['message', 'type', 'param', 'code']) assert.ok(k in e, `error.${k} present in ${body}`);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0, 'error.message not empty');
  assert.equal(typeof e.type, 'string');
  assert.ok(e.param === null || typeof e.param === 'string', 'error.param is string or null');
  assert.ok(e.code === null || typeof e.code === 'string', 'error.code is string or null');
  if (code !== undefined) assert.equal(e.code, code, `error.code in ${body}`);
  if (type !== undefined) assert.equal(e.type, type, `error.type in ${body}`);
  assert.ok(r.headers['x-request-id'], 'error responses carry x-request-id too');
  return e;
}

/** The access-log fields of the contract, with their types. */
export function assertAccessLogShape(entry) {
  const types = {
    request_id: 'string',
    key_alias: ['string', 'null'],
    model: ['string', 'null'],
    provider: ['string', 'null'],
    status: 'number',
    prompt_tokens: entry.usage_source === 'none' ? ['number', 'null'] : 'number',
    completion_tokens: entry.usage_source === 'none' ? ['number', 'null'] : 'number',
    usage_source: 'string',
    latency_ms: 'number',
    ttft_ms: ['number', 'null'],
    overhead_us: 'number',
  };
  for (const [k, t] of Object.entries(types)) {
    assert.ok(k in entry, `access log has ${k}: ${JSON.stringify(entry)}`);
    const actual = entry[k] === null ? 'null' : typeof entry[k];
    assert.ok([t].flat().includes(actual), `access log ${k} is ${actual}, want ${t}: ${JSON.stringify(entry)}`);
  }
  assert.ok(['provider', 'estimated', 'none'].includes(entry.usage_source), `usage_source ${entry.usage_source}`);
  assert.ok(entry.latency_ms >= 0 && entry.overhead_us >= 0);
}

/**
 * SIGTERM with nothing in flight: tollgate exits 0 within drainMs, and no
 * sanitizer (ASan, LSan, UBSan) reported anything during the whole run.
 */
export async function assertCleanShutdown(gw, drainMs = 15000) {
  assert.equal(gw.exit, null, `tollgate is still running (it exited early: ${JSON.stringify(gw.exit)})`);
  gw.signal('SIGTERM');
  const exit = await gw.waitExit(drainMs);
  assert.deepEqual(gw.sanitizerReports(), [], 'no sanitizer reports on stderr');
  assert.deepEqual(exit, { code: 0, signal: null }, `exit status; stderr tail:\n${gw.stderr.slice(-1500)}`);
}
