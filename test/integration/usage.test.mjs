// usage.test.mjs - usage analytics (daemon/admin.c usage_run / usage_sql,
// GET /admin/usage and GET /v1/usage) and the money headers of answers
// (daemon/gateway.c money_headers) against a real PostgreSQL:
//   1. known calls per key and model (stream and not; one model priced, one
//      not; two orgs, a job, config keys), waited for in `calls`;
//   2. GET /admin/usage: every number equals the same sum, average or
//      percentile computed over `calls`, ungrouped and per group (day,
//      model, team, org, key, job, provider); filters narrow it; latency
//      percentiles ordered; the range and its validation; roles;
//   3. GET /v1/usage: a DB key sees its own calls only, a config key the
//      rows of its alias without a key id; no org/team dimension; 401;
//   4. x-tollgate-cost-usd equals the ledger row's price (whole answers of
//      priced models only), x-tollgate-budget-remaining-usd on budgeted keys
//      (streams too);
//   5. clean SIGTERM exit without sanitizer reports.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { newRequestId, sleep, KEY, LIMITED_KEY } from './lib/gateway.mjs';
import { startMigratedPg, startDbGateway, adminClient, makeTenant, MASTER_KEY, usd, api } from './lib/tenancy.mjs';

const T = { timeout: 30000 };

const patch = (cfg) => {
  cfg.models = cfg.models.map((m) => (m.name === 'mock-1' ? { ...m, price: { input: '1.00', output: '2.00' } } : m));
  cfg.models.push({ name: 'mock-2', provider: 'mock' }); // no price, no catalog entry
  cfg.ledger = { ship_interval: '50ms' };
};

/** A chat completion: {status, body, text, headers, id}. */
async function chat(gw, key, model, { stream = false, job = null, content = 'Hello usage!' } = {}) {
  const id = newRequestId('use');
  const body = { model, messages: [{ role: 'user', content }] };
  if (stream) {
    body.stream = true;
    body.stream_options = { include_usage: true };
  }
  const headers = { 'x-request-id': id };
  if (job) headers['x-tollgate-job'] = job;
  const r = await api(gw, 'POST', '/v1/chat/completions', { key, body, headers });
  assert.equal(r.status, 200, `${model} ${stream ? 'stream' : ''}: ${r.text}`);
  if (stream) assert.ok(r.text.includes('data: [DONE]'), r.text);
  return { ...r, id };
}

const expectError = (r, status, code, param, what) => {
  assert.equal(r.status, status, `${what}: ${r.text}`);
  if (code !== undefined) assert.equal(r.body?.error?.code, code, `${what}: ${r.text}`);
  if (param !== undefined) assert.equal(r.body?.error?.param ?? null, param, `${what}: param in ${r.text}`);
};

let pg;
let gw;
let admin;
let a1; // org A, team A1, key kA
let a1k2; // a second key of team A1
let b1; // org B, team B1
let b1same; // a key of team B1 with the alias of A1's key
let job;
const ids = [];

/*
 * Expected report rows computed over `calls` (what the rollup must equal):
 * dims are SQL expressions with their answer names; where is a condition.
 * Each row: {name: value..., requests, errors, prompt_tokens,
 * completion_tokens, cost, price, margin, avg, p50, p95, p99, ttft50}.
 */
function expected(dims, where = 'true', params = []) {
  const from = "(now() AT TIME ZONE 'UTC')::date - 29";
  const sel = dims.map(([expr, name]) => `${expr}::text AS ${name}`);
  const sql = `SELECT json_agg(x) FROM (SELECT ${sel.map((s) => `${s}, `).join('')}count(*) AS requests, ` +
    'count(*) FILTER (WHERE status >= 400) AS errors, sum(prompt_tokens) AS prompt_tokens, ' +
    'sum(completion_tokens) AS completion_tokens, coalesce(sum(cost_nano), 0)::text AS cost_nano, ' +
    'coalesce(sum(price_nano), 0)::text AS price_nano, ' +
    'round((sum(latency_us)::numeric / count(*)) / 1000, 3) AS avg, ' +
    'round(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_us)::numeric / 1000, 3) AS p50, ' +
    'round(percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_us)::numeric / 1000, 3) AS p95, ' +
    'round(percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_us)::numeric / 1000, 3) AS p99, ' +
    'round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_us)::numeric / 1000, 3) AS ttft50 ' +
    `FROM calls WHERE at >= (${from})::timestamp AT TIME ZONE 'UTC' AND (${where}) ` +
    `${dims.length ? `GROUP BY ${dims.map((_, i) => i + 1).join(', ')}` : ''}) x`;
  const out = pg.query(sql, params).trim();
  return out ? JSON.parse(out) : [];
}

/** The report row r equals the expected row e (numbers, money, latency). */
function assertRow(r, e, what) {
  assert.equal(r.requests, e.requests, `${what}: requests`);
  assert.equal(r.errors, e.errors, `${what}: errors`);
  assert.equal(r.prompt_tokens, e.prompt_tokens, `${what}: prompt_tokens`);
  assert.equal(r.completion_tokens, e.completion_tokens, `${what}: completion_tokens`);
  assert.equal(r.cost, usd(e.cost_nano), `${what}: cost`);
  assert.equal(r.price, usd(e.price_nano), `${what}: price`);
  assert.equal(r.margin, usd(BigInt(e.price_nano) - BigInt(e.cost_nano)), `${what}: margin`);
  assert.equal(r.avg_latency_ms, e.avg, `${what}: avg_latency_ms`);
  assert.equal(r.p50_latency_ms, e.p50, `${what}: p50_latency_ms`);
  assert.equal(r.p95_latency_ms, e.p95, `${what}: p95_latency_ms`);
  assert.equal(r.p99_latency_ms, e.p99, `${what}: p99_latency_ms`);
  assert.equal(r.p50_ttft_ms, e.ttft50 ?? undefined, `${what}: p50_ttft_ms`);
  assert.ok(r.avg_latency_ms > 0, `${what}: avg_latency_ms > 0`);
  assert.ok(r.p50_latency_ms <= r.p95_latency_ms && r.p95_latency_ms <= r.p99_latency_ms, `${what}: p50 <= p95 <= p99`);
}

/** The report's rows keyed by their dimension values, compared to expected(). */
function assertReport(data, exp, names, what) {
  const keyOf = (row) => names.map((n) => row[n] ?? '<null>').join('|');
  assert.deepEqual(data.map(keyOf).sort(), exp.map(keyOf).sort(), `${what}: the groups`);
  for (const e of exp) {
    const r = data.find((x) => keyOf(x) === keyOf(e));
    for (const n of names) if (e[n] === null) assert.ok(!(n in r), `${what}: ${n} of a null group is absent (nulls stripped)`);
    assertRow(r, e, `${what} [${keyOf(e)}]`);
  }
}

async function usage(query = '', key = MASTER_KEY) {
  const r = await api(gw, 'GET', `/admin/usage${query}`, { key });
  assert.equal(r.status, 200, `/admin/usage${query}: ${r.text}`);
  assert.equal(r.body.object, 'usage');
  return r.body;
}

const today = () => new Date().toISOString().slice(0, 10);
const daysAgo = (n) => new Date(Date.now() - n * 86400000).toISOString().slice(0, 10);

before(async () => {
  pg = await startMigratedPg();
  gw = await startDbGateway(pg, { patch });
  admin = adminClient(gw);
  [a1, b1] = await Promise.all([makeTenant(admin, 'ua'), makeTenant(admin, 'ub')]);
  a1k2 = await admin.create('keys', { team_id: a1.team.id, alias: 'key-ua-2' });
  b1same = await admin.create('keys', { team_id: b1.team.id, alias: 'key-ua' });
  const j = await api(gw, 'POST', '/v1/jobs', { key: a1.secret, body: { type: 'usage' } });
  assert.equal(j.status, 201, j.text);
  job = j.body.id;

  // the calls: [key, model, stream, job]
  const plan = [
    [a1.secret, 'mock-1', false, job], [a1.secret, 'mock-1', false, job], [a1.secret, 'mock-1', false, null],
    [a1.secret, 'mock-1', true, job], [a1.secret, 'mock-1', true, null], [a1.secret, 'mock-2', false, null],
    [a1k2.key, 'mock-1', false, null], [a1k2.key, 'mock-2', true, null],
    [b1.secret, 'mock-1', false, null], [b1.secret, 'mock-1', true, null], [b1.secret, 'mock-2', true, null],
    [b1same.key, 'mock-1', false, null],
    [KEY, 'mock-1', false, null], [KEY, 'mock-1', true, null], [KEY, 'mock-2', false, null],
    [LIMITED_KEY, 'mock-1', false, null],
  ];
  let n = 0;
  for (const [key, model, stream, jb] of plan) {
    // prompts of different lengths: different token counts per call
    const c = await chat(gw, key, model, { stream, job: jb, content: `usage call ${n++} ${'word '.repeat(n * 3)}` });
    ids.push(c.id);
  }
  // one admitted call that fails (provider `up` at a refused port: 502): an error row
  const failed = newRequestId('use-err');
  const fr = await api(gw, 'POST', '/v1/chat/completions', { key: b1.secret, headers: { 'x-request-id': failed }, body: { model: 'fx-chat', messages: [{ role: 'user', content: 'fail' }] } });
  assert.ok(fr.status >= 500, `the failing call: ${fr.status} ${fr.text}`);
  ids.push(failed);
  // every call is in the ledger (bounded)
  const t0 = performance.now();
  const want = ids.length;
  let got = 0;
  while (performance.now() - t0 < 10000) {
    got = Number(pg.query('SELECT count(*) FROM calls WHERE request_id = ANY(string_to_array(:\'p1\', \',\'))', [ids.join(',')]).trim());
    if (got === want) break;
    await sleep(50);
  }
  assert.equal(got, want, 'every call reached the calls table within 10 s');
  // the rollup too (same statement), for the record
  assert.equal(pg.query('SELECT sum(requests) FROM usage_daily').trim(), String(want));
});

after(async () => {
  await gw?.stop();
  pg?.stop();
});

/* ------------------------------------------------------- 2. /admin/usage */

describe('GET /admin/usage', () => {
  it('no parameters: one row equal to the sums over calls for the last 30 days', T, async () => {
    const u = await usage();
    assert.equal(u.to, today());
    assert.equal(u.from, daysAgo(29));
    assert.equal(u.data.length, 1, JSON.stringify(u));
    const [e] = expected([]);
    assert.equal(e.requests, ids.length);
    assertRow(u.data[0], e, 'all');
    // the priced model makes the price non-zero; cost = price (no catalog entry): margin 0
    assert.ok(BigInt(e.price_nano) > 0n);
    assert.equal(u.data[0].margin, '0.00');
    assert.equal(typeof u.data[0].p50_ttft_ms, 'number', 'streams give a time to first token');
    assert.equal(u.data[0].errors, 1, 'the failed call');
    // no dimension names in an ungrouped row
    for (const k of ['day', 'model', 'team_id', 'org_id', 'key_alias', 'job_id', 'provider']) assert.ok(!(k in u.data[0]), k);
  });

  it('group_by=day,model: one row per model and day, with the right sums', T, async () => {
    const u = await usage('?group_by=day,model');
    const exp = expected([["(at AT TIME ZONE 'UTC')::date", 'day'], ['requested_model', 'model']]);
    assert.deepEqual([...new Set(exp.map((e) => e.model))].sort(), ['fx-chat', 'mock-1', 'mock-2']);
    assertReport(u.data, exp, ['day', 'model'], 'day,model');
    // the unpriced model: requests and tokens, money 0
    const m2 = u.data.filter((r) => r.model === 'mock-2');
    assert.ok(m2.every((r) => r.price === '0.00' && r.cost === '0.00' && r.prompt_tokens > 0));
    // the order of the words does not matter
    const v = await usage('?group_by=model,day');
    assertReport(v.data, exp, ['day', 'model'], 'model,day');
  });

  it('group_by=team / org / key / job / provider: a row per group; config keys have no team_id', T, async () => {
    const team = await usage('?group_by=team');
    const te = expected([['team_id', 'team_id']]);
    assert.deepEqual(te.map((e) => e.team_id).sort(), [a1.team.id, b1.team.id, null].sort());
    assertReport(team.data, te, ['team_id'], 'team');
    const nullRow = team.data.find((r) => !('team_id' in r));
    assert.equal(nullRow.requests, 4, 'the config keys\' calls (test x3, limited x1)');

    assertReport((await usage('?group_by=org')).data, expected([['org_id', 'org_id']]), ['org_id'], 'org');
    // keys: one row per key, also when two teams' keys share an alias
    const keys = await usage('?group_by=key');
    assertReport(keys.data, expected([['key_id', 'key_id'], ['key_alias', 'key_alias']]), ['key_id', 'key_alias'], 'key');
    assert.deepEqual(keys.data.map((r) => r.key_alias).sort(), ['key-ua', 'key-ua', 'key-ua-2', 'key-ub', 'limited', 'test']);
    assert.deepEqual(keys.data.filter((r) => r.key_alias === 'key-ua').map((r) => r.key_id).sort(), [a1.key.id, b1same.id].sort());
    assert.ok(keys.data.filter((r) => r.key_alias === 'test' || r.key_alias === 'limited').every((r) => !('key_id' in r)), 'config keys: no key_id');
    const jobs = await usage('?group_by=job');
    assertReport(jobs.data, expected([['job_id', 'job_id']]), ['job_id'], 'job');
    assert.equal(jobs.data.find((r) => r.job_id === job).requests, 3);
    assertReport((await usage('?group_by=provider')).data, expected([['provider', 'provider']]), ['provider'], 'provider');
    // two dimensions of different kinds
    assertReport((await usage('?group_by=team,model')).data, expected([['team_id', 'team_id'], ['requested_model', 'model']]),
      ['team_id', 'model'], 'team,model');
    // every dimension at once (a word twice counts once)
    const all = await usage('?group_by=day,model,provider,org,team,key,job,key');
    assertReport(all.data, expected([["(at AT TIME ZONE 'UTC')::date", 'day'], ['requested_model', 'model'], ['provider', 'provider'],
      ['org_id', 'org_id'], ['team_id', 'team_id'], ['key_alias', 'key_alias'], ['job_id', 'job_id'], ['key_id', 'key_id']]),
    ['day', 'model', 'provider', 'org_id', 'team_id', 'key_alias', 'job_id', 'key_id'], 'every dimension');
  });

  it('filters team_id, org_id, job_id narrow the report', T, async () => {
    const ta = await usage(`?team_id=${a1.team.id}`);
    assertReport(ta.data, expected([], "team_id = :'p1'::uuid", [a1.team.id]), [], 'team A1');
    assert.equal(ta.data[0].requests, 8);
    const ob = await usage(`?org_id=${b1.org.id}&group_by=model`);
    assertReport(ob.data, expected([['requested_model', 'model']], "org_id = :'p1'::uuid", [b1.org.id]), ['model'], 'org B by model');
    const jb = await usage(`?job_id=${job}`);
    assertReport(jb.data, expected([], "job_id = :'p1'::uuid", [job]), [], 'the job');
    assert.equal(jb.data[0].requests, 3);
    // filters combine: team A1 and org B have nothing in common
    assert.deepEqual((await usage(`?team_id=${a1.team.id}&org_id=${b1.org.id}`)).data, []);
    // an unknown team: nothing
    assert.deepEqual((await usage(`?team_id=${crypto.randomUUID()}`)).data, []);
  });

  it('the range: explicit, in the past (empty), and its validation', T, async () => {
    const u = await usage(`?from=${today()}&to=${today()}`);
    assert.equal(u.from, today());
    assert.equal(u.to, today());
    assertRow(u.data[0], expected([])[0], 'today only');
    const past = await usage('?from=2000-01-01&to=2000-01-01');
    assert.deepEqual(past.data, []);
    assert.equal(past.from, '2000-01-01');
    const grouped = await usage('?from=2000-01-01&to=2000-01-31&group_by=day,model');
    assert.deepEqual(grouped.data, []);
    // a range that ends yesterday does not include today
    assert.deepEqual((await usage(`?from=${daysAgo(10)}&to=${daysAgo(1)}`)).data, []);
    // a range that starts tomorrow neither
    assert.deepEqual((await usage(`?from=${daysAgo(-1)}&to=${daysAgo(-1)}`)).data, []);

    const bad = [
      ['?from=yesterday', 'from'],
      ['?from=2026-1-01', 'from'],
      ['?from=2026-13-01', 'from'],
      ['?from=2026-02-30', 'from'],
      ['?from=2025-02-29', 'from'],
      ['?from=0000-01-01', 'from'],
      ['?to=2026-04-31', 'to'],
      ['?to=20260101', 'to'],
      ['?to=2026-01-01T00:00:00Z', 'to'],
      ['?from=2026-05-02&to=2026-05-01', 'from'],
      ['?group_by=bogus', 'group_by'],
      ['?group_by=day,bogus', 'group_by'],
      ['?team_id=nope', 'team_id'],
      ['?org_id=123', 'org_id'],
      ['?job_id=zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz', 'job_id'],
      ['?key_id=' + crypto.randomUUID(), 'key_id'],
      ['?limit=10', 'limit'],
    ];
    for (const [q, param] of bad) {
      const r = await api(gw, 'GET', `/admin/usage${q}`, { key: MASTER_KEY });
      expectError(r, 400, 'invalid_query', param, q);
    }
    // a leap day is a day
    assert.deepEqual((await usage('?from=2024-02-29&to=2024-02-29')).data, []);
    expectError(await api(gw, 'POST', '/admin/usage', { key: MASTER_KEY, body: {} }), 405, 'method_not_allowed', undefined, 'POST');
  });

  it('roles: a viewer reads it; no key or a client key is 401', T, async () => {
    const v = await admin.create('admin-keys', { name: 'usage-viewer', role: 'viewer' });
    const u = await usage('?group_by=team', v.key);
    assertReport(u.data, expected([['team_id', 'team_id']]), ['team_id'], 'viewer');
    assert.equal((await api(gw, 'GET', '/admin/usage', { key: null })).status, 401);
    assert.equal((await api(gw, 'GET', '/admin/usage', { key: a1.secret })).status, 401);
    assert.equal((await api(gw, 'GET', '/admin/usage', { key: KEY })).status, 401);
  });
});

/* ---------------------------------------------------------- 3. /v1/usage */

describe('GET /v1/usage', () => {
  const keyUsage = async (key, query = '') => {
    const r = await api(gw, 'GET', `/v1/usage${query}`, { key });
    assert.equal(r.status, 200, `/v1/usage${query}: ${r.text}`);
    assert.equal(r.body.object, 'usage');
    return r.body;
  };

  it('a DB key sees exactly its own calls', T, async () => {
    for (const [k, id, n] of [[a1.secret, a1.key.id, 6], [a1k2.key, a1k2.id, 2], [b1.secret, b1.key.id, 4], [b1same.key, b1same.id, 1]]) {
      const u = await keyUsage(k);
      const e = expected([], "key_id = :'p1'::uuid", [id]);
      assert.equal(e[0].requests, n);
      assertReport(u.data, e, [], `key ${id}`);
      const m = await keyUsage(k, '?group_by=model,day');
      assertReport(m.data, expected([["(at AT TIME ZONE 'UTC')::date", 'day'], ['requested_model', 'model']], "key_id = :'p1'::uuid", [id]),
        ['day', 'model'], `key ${id} by model`);
      // key and job dimensions are offered
      assertReport((await keyUsage(k, '?group_by=key')).data, expected([['key_id', 'key_id'], ['key_alias', 'key_alias']], "key_id = :'p1'::uuid", [id]), ['key_id', 'key_alias'], 'by key');
    }
    // a job filter within the key's own calls
    const j = await keyUsage(a1.secret, `?job_id=${job}`);
    assertReport(j.data, expected([], "key_id = :'p1'::uuid AND job_id = :'p2'::uuid", [a1.key.id, job]), [], 'key + job');
    // another key's job: nothing of it
    assert.deepEqual((await keyUsage(b1.secret, `?job_id=${job}`)).data, []);
  });

  it('a config key sees the rows of its alias without a key id', T, async () => {
    const u = await keyUsage(KEY);
    const e = expected([], "key_id IS NULL AND key_alias = 'test'");
    assert.equal(e[0].requests, 3);
    assertReport(u.data, e, [], 'config key test');
    const l = await keyUsage(LIMITED_KEY, '?group_by=model');
    assertReport(l.data, expected([['requested_model', 'model']], "key_id IS NULL AND key_alias = 'limited'"), ['model'], 'config key limited');
    assert.equal(l.data.length, 1);
    assert.equal(l.data[0].requests, 1);
  });

  it('no org or team dimension or filter; other errors; 401 without a key', T, async () => {
    for (const [q, param] of [['?group_by=team', 'group_by'], ['?group_by=org', 'group_by'], ['?group_by=day,team', 'group_by'],
      [`?team_id=${a1.team.id}`, 'team_id'], [`?org_id=${a1.org.id}`, 'org_id'], ['?from=2026-02-30', 'from'], ['?from=2026-05-02&to=2026-05-01', 'from']]) {
      for (const key of [a1.secret, KEY]) {
        const r = await api(gw, 'GET', `/v1/usage${q}`, { key });
        expectError(r, 400, 'invalid_query', param, `/v1/usage${q}`);
      }
    }
    assert.deepEqual((await keyUsage(a1.secret, '?from=2000-01-01&to=2000-01-01')).data, []);
    expectError(await api(gw, 'GET', '/v1/usage', { key: null }), 401, undefined, undefined, 'no key');
    assert.equal((await api(gw, 'GET', '/v1/usage', { key: 'tg-not-a-key' })).status, 401);
    // the master key is no client key
    assert.equal((await api(gw, 'GET', '/v1/usage', { key: MASTER_KEY })).status, 401);
    assert.equal((await api(gw, 'POST', '/v1/usage', { key: a1.secret, body: {} })).status, 405);
  });
});

/* ------------------------------------------------------- 4. the headers */

describe('money headers', () => {
  const rowPrice = async (id) => {
    let out = '';
    const t0 = performance.now();
    while (performance.now() - t0 < 10000) {
      out = pg.query("SELECT coalesce(price_nano::text, 'null') FROM calls WHERE request_id = :'p1'", [id]).trim();
      if (out) break;
      await sleep(50);
    }
    assert.ok(out, `the ledger row of ${id} within 10 s`);
    return out;
  };

  it('x-tollgate-cost-usd: a whole answer of a priced model, equal to its ledger row\'s price', T, async () => {
    for (const [key, content] of [[a1.secret, 'short'], [b1.secret, 'a longer prompt for another price '.repeat(5)], [KEY, 'config key']]) {
      const c = await chat(gw, key, 'mock-1', { content });
      const h = c.headers.get('x-tollgate-cost-usd');
      assert.match(h ?? '', /^\d+\.\d{2,9}$/, `cost header: ${h}`);
      const price = await rowPrice(c.id);
      assert.notEqual(price, 'null');
      assert.equal(h, usd(price), `${c.id}: header ${h}, row ${price}`);
      // the price is the tokens at the configured price
      const b = c.body.usage;
      assert.equal(BigInt(price), BigInt(b.prompt_tokens) * 1000n + BigInt(b.completion_tokens) * 2000n);
      // no budget: no remaining header
      assert.equal(c.headers.get('x-tollgate-budget-remaining-usd'), null);
    }
    // an unpriced model: no cost header (its row has no price)
    const u = await chat(gw, a1.secret, 'mock-2');
    assert.equal(u.headers.get('x-tollgate-cost-usd'), null);
    assert.equal(await rowPrice(u.id), 'null');
    // a stream: no cost header (not known when the head is sent)
    const s = await chat(gw, a1.secret, 'mock-1', { stream: true });
    assert.equal(s.headers.get('x-tollgate-cost-usd'), null);
  });

  it('x-tollgate-budget-remaining-usd: a budgeted key\'s answers carry it (streams too), within the budget', T, async () => {
    const t = await makeTenant(admin, 'ubud');
    const k = await admin.update('keys', t.key.id, { max_budget: '1.00', budget_duration: '1d' });
    assert.equal(k.max_budget, '1.00');
    const dec = /^\d+\.\d{2,9}$/;
    let last = 1;
    const c = await chat(gw, t.secret, 'mock-1');
    const rem = c.headers.get('x-tollgate-budget-remaining-usd');
    assert.match(rem ?? '', dec, `remaining: ${rem}`);
    assert.ok(Number(rem) <= 1 && Number(rem) > 0.99, `remaining ${rem}`);
    assert.match(c.headers.get('x-tollgate-cost-usd') ?? '', dec);
    last = Number(rem);
    const s = await chat(gw, t.secret, 'mock-1', { stream: true });
    const srem = s.headers.get('x-tollgate-budget-remaining-usd');
    assert.match(srem ?? '', dec, `stream remaining: ${srem}`);
    assert.ok(Number(srem) <= last, `stream remaining ${srem} <= ${last}`);
    assert.equal(s.headers.get('x-tollgate-cost-usd'), null, 'a stream has no cost header');
    // the unpriced model: no cost header (unpriced models are not budgeted)
    const u = await chat(gw, t.secret, 'mock-2');
    assert.equal(u.headers.get('x-tollgate-cost-usd'), null);
    const urem = u.headers.get('x-tollgate-budget-remaining-usd');
    if (urem !== null) assert.match(urem, dec);
    // after a few calls the remainder has gone down by at least what was charged before the last admission
    const c2 = await chat(gw, t.secret, 'mock-1');
    const rem2 = Number(c2.headers.get('x-tollgate-budget-remaining-usd'));
    assert.ok(rem2 <= Number(rem), `remaining ${rem2} <= ${rem}`);
    assert.ok(rem2 >= 1 - 0.01, `remaining ${rem2} within a cent of the budget`);
  });
});

/* ---------------------------------------------------------------- 5. exit */

describe('shutdown', () => {
  it('SIGTERM: exit 0 without sanitizer reports', T, async () => {
    gw.signal('SIGTERM');
    const exit = await gw.waitExit(10000);
    assert.deepEqual(exit, { code: 0, signal: null }, gw.stderr.slice(-3000));
    assert.deepEqual(gw.sanitizerReports(), [], gw.stderr.slice(-3000));
    assert.deepEqual(gw.stdoutGarbage, []);
  });
});
