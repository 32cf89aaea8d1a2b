// jobs.test.mjs - jobs (daemon/jobs.c) against a real PostgreSQL:
//   1. POST /v1/jobs: the created job, the refused bodies, its summary;
//   2. calls attached with x-tollgate-job (stream and not): the summary is
//      the sum of the job's rows of `calls`, priced exactly;
//   3. team isolation: another team's key (and config vs DB keys) neither
//      sees, ends nor attaches to a job, and nothing reaches the ledger;
//   4. complete / fail: once only (409 after), no attaching afterwards;
//   5. credits: a job_based team pays one credit per completed job, once;
//      failed jobs and other budget modes pay nothing;
//   6. two instances: B attaches at once to A's job and refuses it within
//      1 s after A ended it (NOTIFY), also when the id is spelt in capitals;
//   7. the seed's paths (/api/jobs/create, llm-call, llm-call-stream through
//      the openai SDK, complete, /api/teams/{id}/usage);
//   8. errors: bad and unknown job ids; no database: 503;
//   9. clean SIGTERM exit without sanitizer reports.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { performance } from 'node:perf_hooks';
import OpenAI from 'openai';
import { startGateway, baseConfig, newRequestId, sleep, KEY, LIMITED_KEY } from './lib/gateway.mjs';
import { startMigratedPg, startDbGateway, adminClient, makeTenant, usd, api } from './lib/tenancy.mjs';

const T = { timeout: 30000 };
const PROPAGATION_MS = 1000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** mock-1's configured price: USD per 1M tokens, as nano-USD per token. */
const IN_NANO = 1000n;
const OUT_NANO = 2000n;

const priced = (cfg) => {
  cfg.models = cfg.models.map((m) => (m.name === 'mock-1' ? { ...m, price: { input: '1.00', output: '2.00' } } : m));
};

const createJob = async (gw, key, body = { type: 'test' }) => {
  const r = await api(gw, 'POST', '/v1/jobs', { key, body });
  assert.equal(r.status, 201, r.text);
  return r.body;
};

/**
 * A chat completion with mock-1, attached to `job` by header (null: none).
 * {status, body, text, id}; a stream's text is the whole SSE body.
 */
async function chat(gw, key, job, { stream = false, includeUsage, path = '/v1/chat/completions', id = newRequestId('job'), content = 'Hello there, job!' } = {}) {
  const body = { model: 'mock-1', messages: [{ role: 'user', content }] };
  if (stream) body.stream = true;
  if (includeUsage !== undefined) body.stream_options = { include_usage: includeUsage };
  const headers = { 'x-request-id': id };
  if (job !== null) headers['x-tollgate-job'] = job;
  const r = await api(gw, 'POST', path, { key, body, headers });
  return { ...r, id };
}

/** Polls probe() every everyMs until it returns {ok: true, ...} or limitMs passed: {ms, last}. */
async function pollUntil(probe, { limitMs = 5000, everyMs = 50 } = {}) {
  const t0 = performance.now();
  let last;
  for (;;) {
    last = await probe();
    if (last?.ok) return { ms: performance.now() - t0, last };
    if (performance.now() - t0 > limitMs) return { ms: Infinity, last };
    await sleep(everyMs);
  }
}

/** GET /v1/jobs/{id} until it counts `n` calls (the ledger shipped them): the summary. */
async function summaryWithCalls(gw, key, jobId, n) {
  const r = await pollUntil(async () => {
    const s = await api(gw, 'GET', `/v1/jobs/${jobId}`, { key });
    return { ok: s.status === 200 && s.body.calls === n, s };
  }, { limitMs: 8000, everyMs: 100 });
  assert.ok(r.ms < Infinity, `job ${jobId}: expected ${n} calls in its summary; last ${r.last.s.status} ${r.last.s.text}`);
  return r.last.s.body;
}

/** The job's rows of `calls` summed: {calls, prompt, completion, cost, price} (BigInt). */
function callsSums(pg, jobId) {
  const out = pg.query(
    "SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(cost_nano), 0), coalesce(sum(price_nano), 0) FROM calls WHERE job_id = :'p1'::uuid",
    [jobId],
  ).trim().split('|').map((v) => BigInt(v));
  return { calls: out[0], prompt: out[1], completion: out[2], cost: out[3], price: out[4] };
}

const countCalls = (pg, where, params) => Number(pg.query(`SELECT count(*) FROM calls WHERE ${where}`, params).trim());

const expectError = (r, status, code, what) => {
  assert.equal(r.status, status, `${what}: ${r.text}`);
  assert.equal(r.body?.error?.code, code, `${what}: ${r.text}`);
};

let pg;
let gwA;
let gwB;
let admin;
let ta; // tenant A
let tb; // tenant B

before(async () => {
  pg = await startMigratedPg();
  [gwA, gwB] = await Promise.all([
    startDbGateway(pg, { patch: priced }),
    startDbGateway(pg, { patch: priced }),
  ]);
  admin = adminClient(gwA);
  [ta, tb] = await Promise.all([makeTenant(admin, 'ja'), makeTenant(admin, 'jb')]);
});

after(async () => {
  await gwA?.stop();
  await gwB?.stop();
  pg?.stop();
});

/* --------------------------------------------------------------- 1. create */

describe('creating a job', () => {
  it('POST /v1/jobs answers 201 with the job; GET gives its empty summary', T, async () => {
    const meta = { customer: 'c-42', tags: ['a', 'b'], n: 3, nested: { ok: true } };
    const r = await api(gwA, 'POST', '/v1/jobs', { key: ta.secret, body: { type: 'summarize', metadata: meta } });
    assert.equal(r.status, 201, r.text);
    const j = r.body;
    assert.match(j.id, UUID);
    assert.equal(j.object, 'job');
    assert.equal(j.type, 'summarize');
    assert.equal(j.status, 'running');
    assert.equal(j.team_id, ta.team.id);
    assert.deepEqual(j.metadata, meta);
    assert.ok(Math.abs(Date.parse(j.created_at) - Date.now()) < 60000, `created_at ${j.created_at}`);

    // the row: the team, the key and its alias
    assert.equal(pg.query("SELECT team_id, key_id, key_alias, status FROM jobs WHERE id = :'p1'::uuid", [j.id]).trim(),
      `${ta.team.id}|${ta.key.id}|key-ja|running`);

    const g = await api(gwA, 'GET', `/v1/jobs/${j.id}`, { key: ta.secret });
    assert.equal(g.status, 200, g.text);
    assert.equal(g.body.id, j.id);
    assert.equal(g.body.status, 'running');
    assert.equal(g.body.ended_at, null);
    assert.equal(g.body.calls, 0);
    assert.equal(g.body.prompt_tokens, 0);
    assert.equal(g.body.completion_tokens, 0);
    assert.equal(g.body.cost, '0.00');
    assert.equal(g.body.price, '0.00');
    assert.equal(g.body.margin, '0.00');
    assert.deepEqual(g.body.metadata, meta);

    // metadata is optional ({}), and a type of exactly 200 characters is fine
    const m = await createJob(gwA, ta.secret, { type: 'x'.repeat(200) });
    assert.deepEqual(m.metadata, {});
    assert.equal(m.type.length, 200);
    // 200 characters that are more than 200 bytes
    const u = await createJob(gwA, ta.secret, { type: 'é'.repeat(200) });
    assert.equal(u.type, 'é'.repeat(200));
  });

  it('bad bodies are refused with 400 and create nothing', T, async () => {
    const before = Number(pg.query('SELECT count(*) FROM jobs').trim());
    const cases = [
      [{}, 'invalid_field', 'no type'],
      [{ metadata: {} }, 'invalid_field', 'metadata but no type'],
      [{ type: '' }, 'invalid_field', 'empty type'],
      [{ type: 7 }, 'invalid_field', 'type not a string'],
      [{ type: 'x'.repeat(201) }, 'invalid_field', 'type too long'],
      [{ type: 'é'.repeat(201) }, 'invalid_field', 'type too long (multibyte)'],
      [{ type: 't', metadata: [1, 2] }, 'invalid_field', 'metadata an array'],
      [{ type: 't', metadata: 'text' }, 'invalid_field', 'metadata a string'],
      [{ type: 't', metadata: null }, 'invalid_field', 'metadata null'],
      [{ type: 't', extra: 1 }, 'invalid_field', 'unknown field'],
      ['{"type": "t"', 'invalid_json', 'malformed JSON'],
      ['[1]', 'invalid_json', 'not an object'],
      ['', 'invalid_field', 'empty body'],
    ];
    for (const [body, code, what] of cases) {
      const r = await api(gwA, 'POST', '/v1/jobs', { key: ta.secret, body });
      expectError(r, 400, code, what);
    }
    assert.equal(Number(pg.query('SELECT count(*) FROM jobs').trim()), before, 'no job was created');
    // method, id shape, action, key
    expectError(await api(gwA, 'GET', '/v1/jobs', { key: ta.secret }), 405, 'method_not_allowed', 'GET /v1/jobs');
    expectError(await api(gwA, 'GET', '/v1/jobs/not-a-uuid', { key: ta.secret }), 404, 'job_not_found', 'GET of a non-id');
    expectError(await api(gwA, 'GET', `/v1/jobs/${crypto.randomUUID()}`, { key: ta.secret }), 404, 'job_not_found', 'GET of an unknown id');
    const j = await createJob(gwA, ta.secret);
    expectError(await api(gwA, 'POST', `/v1/jobs/${j.id}`, { key: ta.secret }), 405, 'method_not_allowed', 'POST /v1/jobs/{id}');
    expectError(await api(gwA, 'GET', `/v1/jobs/${j.id}/complete`, { key: ta.secret }), 405, 'method_not_allowed', 'GET complete');
    expectError(await api(gwA, 'POST', `/v1/jobs/${j.id}/pause`, { key: ta.secret }), 404, 'unknown_url', 'unknown action');
    assert.equal((await api(gwA, 'POST', '/v1/jobs', { key: null, body: { type: 't' } })).status, 401, 'no key');
    assert.equal((await api(gwA, 'POST', '/v1/jobs', { key: 'tg-nope', body: { type: 't' } })).status, 401, 'bad key');
  });
});

/* ------------------------------------------------------ 2. the job's calls */

describe('calls attached to a job', () => {
  it('the summary is the sum of the job\'s calls rows, priced exactly', T, async () => {
    const j = await createJob(gwA, ta.secret, { type: 'sum' });
    const other = await createJob(gwA, ta.secret, { type: 'other' });
    const calls = [
      await chat(gwA, ta.secret, j.id),
      await chat(gwA, ta.secret, j.id, { content: 'A somewhat longer prompt, so that the counts differ between calls.' }),
      await chat(gwA, ta.secret, j.id, { stream: true, includeUsage: true }),
      await chat(gwA, ta.secret, j.id, { stream: true }),
      await chat(gwB, ta.secret, j.id), // the other instance: the same job
    ];
    for (const c of calls) assert.equal(c.status, 200, c.text);
    assert.ok(calls[2].text.includes('data: [DONE]'), calls[2].text);
    // a call of another job and one of no job: not this job's
    assert.equal((await chat(gwA, ta.secret, other.id)).status, 200);
    assert.equal((await chat(gwA, ta.secret, null)).status, 200);

    const s = await summaryWithCalls(gwA, ta.secret, j.id, calls.length);
    const sum = callsSums(pg, j.id);
    assert.equal(sum.calls, BigInt(calls.length));
    assert.equal(BigInt(s.prompt_tokens), sum.prompt);
    assert.equal(BigInt(s.completion_tokens), sum.completion);
    assert.ok(sum.prompt > 0n && sum.completion > 0n, 'tokens were counted');
    assert.equal(s.cost, usd(sum.cost));
    assert.equal(s.price, usd(sum.price));
    assert.equal(s.margin, usd(sum.price - sum.cost));
    // exactly tokens x price (1.00 USD per 1M in, 2.00 per 1M out; mock-1 has
    // no catalog entry, so its cost is the configured price)
    const exact = sum.prompt * IN_NANO + sum.completion * OUT_NANO;
    assert.equal(sum.price, exact);
    assert.equal(sum.cost, exact);
    assert.equal(s.price, usd(exact));
    assert.equal(s.cost, usd(exact));
    assert.equal(s.margin, '0.00');
    // row by row too, and every row is the caller's, attached, request id kept
    const rows = pg.query(
      "SELECT request_id, team_id, key_id, stream, status, prompt_tokens, completion_tokens, cost_nano, price_nano FROM calls WHERE job_id = :'p1'::uuid ORDER BY request_id",
      [j.id],
    ).trim().split('\n').map((l) => l.split('|'));
    assert.deepEqual(rows.map((r) => r[0]).sort(), calls.map((c) => c.id).sort());
    for (const [rid, team, key, stream, status, p, o, cost, price] of rows) {
      assert.equal(team, ta.team.id, rid);
      assert.equal(key, ta.key.id, rid);
      assert.equal(status, '200', rid);
      assert.equal(BigInt(price), BigInt(p) * IN_NANO + BigInt(o) * OUT_NANO, `${rid}: price`);
      assert.equal(cost, price, `${rid}: cost`);
      assert.equal(stream, calls.find((c) => c.id === rid).text.startsWith('data:') ? 't' : 'f', `${rid}: stream`);
    }
    // the other job: its own one call
    const so = await summaryWithCalls(gwA, ta.secret, other.id, 1);
    assert.equal(BigInt(so.prompt_tokens), callsSums(pg, other.id).prompt);
  });
});

/* ----------------------------------------------------------- 3. isolation */

describe('team isolation', () => {
  it('another team\'s key gets 404 for GET, complete, fail and attaching; nothing is recorded', T, async () => {
    const j = await createJob(gwA, ta.secret, { type: 'private' });
    for (const gw of [gwA, gwB]) {
      expectError(await api(gw, 'GET', `/v1/jobs/${j.id}`, { key: tb.secret }), 404, 'job_not_found', 'GET by B');
      expectError(await api(gw, 'POST', `/v1/jobs/${j.id}/complete`, { key: tb.secret }), 404, 'job_not_found', 'complete by B');
      expectError(await api(gw, 'POST', `/v1/jobs/${j.id}/fail`, { key: tb.secret }), 404, 'job_not_found', 'fail by B');
      expectError(await api(gw, 'POST', `/api/jobs/${j.id}/complete`, { key: tb.secret }), 404, 'job_not_found', 'seed complete by B');
    }
    // attaching: refused on both instances, stream or not, header or seed path
    const refused = [
      await chat(gwA, tb.secret, j.id),
      await chat(gwA, tb.secret, j.id, { stream: true }),
      await chat(gwB, tb.secret, j.id),
      await chat(gwA, tb.secret, null, { path: `/api/jobs/${j.id}/llm-call` }),
      await chat(gwB, tb.secret, null, { path: `/api/jobs/${j.id}/llm-call` }),
    ];
    for (const c of refused) expectError(c, 404, 'job_not_found', `attach by B (${c.id})`);
    // a call of B that is recorded proves the ledger shipped past the refusals
    const ok = await chat(gwA, tb.secret, null);
    assert.equal(ok.status, 200, ok.text);
    const shipped = await pollUntil(async () => ({ ok: countCalls(pg, "request_id = :'p1'", [ok.id]) === 1 }), { limitMs: 8000, everyMs: 100 });
    assert.ok(shipped.ms < Infinity, 'B\'s own call reached the ledger');
    for (const c of refused) assert.equal(countCalls(pg, "request_id = :'p1'", [c.id]), 0, `refused call ${c.id} is not in the ledger`);
    assert.equal(countCalls(pg, "job_id = :'p1'::uuid", [j.id]), 0, 'the job has no calls');
    // the job is untouched
    const g = await api(gwA, 'GET', `/v1/jobs/${j.id}`, { key: ta.secret });
    assert.equal(g.body.status, 'running');
    assert.equal((await chat(gwA, ta.secret, j.id)).status, 200, 'A still attaches');
  });

  it('a config key\'s job (owned by its alias) and a DB key\'s job do not see each other', T, async () => {
    const cj = await createJob(gwA, KEY, { type: 'config-owned' });
    assert.equal(cj.team_id, null);
    assert.equal(pg.query("SELECT key_alias, team_id IS NULL, key_id IS NULL FROM jobs WHERE id = :'p1'::uuid", [cj.id]).trim(), 'test|t|t');
    const dj = await createJob(gwA, ta.secret, { type: 'db-owned' });

    // the owner: sees and attaches
    assert.equal((await api(gwA, 'GET', `/v1/jobs/${cj.id}`, { key: KEY })).status, 200);
    assert.equal((await chat(gwA, KEY, cj.id)).status, 200);
    assert.equal((await chat(gwB, KEY, cj.id)).status, 200);
    // DB keys do not see a config key's job
    for (const key of [ta.secret, tb.secret]) {
      expectError(await api(gwA, 'GET', `/v1/jobs/${cj.id}`, { key }), 404, 'job_not_found', 'DB key GET of config job');
      expectError(await chat(gwA, key, cj.id), 404, 'job_not_found', 'DB key attach to config job');
      expectError(await chat(gwB, key, cj.id), 404, 'job_not_found', 'DB key attach to config job (B)');
      expectError(await api(gwA, 'POST', `/v1/jobs/${cj.id}/complete`, { key }), 404, 'job_not_found', 'DB key complete of config job');
    }
    // nor another config key (another alias)
    expectError(await api(gwA, 'GET', `/v1/jobs/${cj.id}`, { key: LIMITED_KEY }), 404, 'job_not_found', 'other alias GET');
    expectError(await chat(gwA, LIMITED_KEY, cj.id), 404, 'job_not_found', 'other alias attach');
    // config keys do not see a DB key's job
    for (const gw of [gwA, gwB]) {
      expectError(await api(gw, 'GET', `/v1/jobs/${dj.id}`, { key: KEY }), 404, 'job_not_found', 'config key GET of DB job');
      expectError(await chat(gw, KEY, dj.id), 404, 'job_not_found', 'config key attach to DB job');
      expectError(await api(gw, 'POST', `/v1/jobs/${dj.id}/fail`, { key: KEY }), 404, 'job_not_found', 'config key fail of DB job');
    }
    const s = await summaryWithCalls(gwA, KEY, cj.id, 2);
    assert.equal(s.status, 'running');
    assert.equal(s.team_id, null);
    assert.equal(pg.query("SELECT count(*) FROM calls WHERE job_id = :'p1'::uuid AND key_alias = 'test' AND team_id IS NULL", [cj.id]).trim(), '2');
    assert.equal(pg.query("SELECT status FROM jobs WHERE id = :'p1'::uuid", [dj.id]).trim(), 'running');
  });
});

/* -------------------------------------------------------------- 4. ending */

describe('ending a job', () => {
  for (const [action, status] of [['complete', 'completed'], ['fail', 'failed']]) {
    it(`/${action}: 200 ${status} once, then 409; attaching is refused`, T, async () => {
      const j = await createJob(gwA, ta.secret, { type: `end-${action}` });
      assert.equal((await chat(gwA, ta.secret, j.id)).status, 200);
      assert.equal((await chat(gwB, ta.secret, j.id)).status, 200); // B caches it running
      const r = await api(gwA, 'POST', `/v1/jobs/${j.id}/${action}`, { key: ta.secret });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.body.id, j.id);
      assert.equal(r.body.status, status);
      assert.equal(typeof r.body.ended_at, 'string');
      assert.ok(Date.parse(r.body.ended_at) >= Date.parse(j.created_at), `ended_at ${r.body.ended_at}`);
      assert.equal(typeof r.body.calls, 'number');
      assert.equal(pg.query("SELECT status, ended_at IS NOT NULL FROM jobs WHERE id = :'p1'::uuid", [j.id]).trim(), `${status}|t`);

      for (const again of ['complete', 'fail']) {
        expectError(await api(gwA, 'POST', `/v1/jobs/${j.id}/${again}`, { key: ta.secret }), 409, 'job_not_running', `${again} after ${action}`);
        expectError(await api(gwB, 'POST', `/v1/jobs/${j.id}/${again}`, { key: ta.secret }), 409, 'job_not_running', `${again} after ${action} (B)`);
      }
      // same instance: at once; header, stream and the seed path
      expectError(await chat(gwA, ta.secret, j.id), 409, 'job_not_running', 'attach after end');
      expectError(await chat(gwA, ta.secret, j.id, { stream: true }), 409, 'job_not_running', 'stream attach after end');
      expectError(await chat(gwA, ta.secret, null, { path: `/api/jobs/${j.id}/llm-call` }), 409, 'job_not_running', 'llm-call after end');
      // the other instance: within a second (NOTIFY)
      const p = await pollUntil(async () => {
        const c = await chat(gwB, ta.secret, j.id);
        return { ok: c.status === 409, c };
      }, { limitMs: 3000 });
      assert.ok(p.ms < PROPAGATION_MS, `B refuses within ${PROPAGATION_MS} ms; took ${p.ms} (last ${p.last.c.status})`);
      expectError(p.last.c, 409, 'job_not_running', 'attach on B after end');
      // another team still gets 404, not 409
      expectError(await chat(gwA, tb.secret, j.id), 404, 'job_not_found', 'B after end');
      const g = await summaryWithCalls(gwA, ta.secret, j.id, 2);
      assert.equal(g.status, status);
      assert.equal(g.ended_at, r.body.ended_at);
    });
  }
});

/* ------------------------------------------------------------ 5. credits */

describe('credits', () => {
  const balance = async (team) => (await admin.get('teams', team.id)).credit_balance;
  const jobTx = (jobId) => pg.query("SELECT team_id, amount_nano, kind, actor FROM credit_transactions WHERE kind = 'job' AND reference = :'p1'", [jobId]).trim();

  it('a job_based team pays one credit per completed job, once; failed jobs and other modes pay nothing', T, async () => {
    const jb = await makeTenant(admin, 'jobbased');
    const cu = await makeTenant(admin, 'consumption');
    await admin.update('teams', jb.team.id, { budget_mode: 'job_based' });
    assert.equal((await admin.get('teams', jb.team.id)).budget_mode, 'job_based');
    const top = await admin.call('POST', `teams/${jb.team.id}/credits`, { kind: 'topup', amount: '10.00' });
    assert.equal(top.status, 201, top.text);
    assert.equal(await balance(jb.team), '10.00');

    const j = await createJob(gwA, jb.secret, { type: 'billable' });
    assert.equal((await chat(gwA, jb.secret, j.id)).status, 200);
    const c = await api(gwA, 'POST', `/v1/jobs/${j.id}/complete`, { key: jb.secret });
    assert.equal(c.status, 200, c.text);
    assert.equal(c.body.credits_charged, '1.00');
    assert.equal(jobTx(j.id), `${jb.team.id}|-1000000000|job|gateway`);
    assert.equal(await balance(jb.team), '9.00');
    // replays (both instances, both paths) never charge twice
    expectError(await api(gwA, 'POST', `/v1/jobs/${j.id}/complete`, { key: jb.secret }), 409, 'job_not_running', 'second complete');
    expectError(await api(gwB, 'POST', `/api/jobs/${j.id}/complete`, { key: jb.secret }), 409, 'job_not_running', 'second complete (B, seed path)');
    expectError(await api(gwA, 'POST', `/v1/jobs/${j.id}/fail`, { key: jb.secret }), 409, 'job_not_running', 'fail after complete');
    assert.equal(pg.query("SELECT count(*) FROM credit_transactions WHERE reference = :'p1'", [j.id]).trim(), '1');
    assert.equal(await balance(jb.team), '9.00');
    // completions racing on both instances: one wins, one charge
    const j2 = await createJob(gwA, jb.secret, { type: 'raced' });
    const raced = await Promise.all([gwA, gwB, gwA, gwB].map((gw) => api(gw, 'POST', `/v1/jobs/${j2.id}/complete`, { key: jb.secret })));
    assert.deepEqual(raced.map((r) => r.status).sort(), [200, 409, 409, 409], raced.map((r) => r.text).join('\n'));
    assert.equal(pg.query("SELECT count(*) FROM credit_transactions WHERE reference = :'p1'", [j2.id]).trim(), '1');
    assert.equal(await balance(jb.team), '8.00');

    // a failed job costs nothing
    const f = await createJob(gwA, jb.secret, { type: 'failing' });
    const fr = await api(gwA, 'POST', `/v1/jobs/${f.id}/fail`, { key: jb.secret });
    assert.equal(fr.status, 200, fr.text);
    assert.equal(fr.body.credits_charged, '0.00');
    assert.equal(jobTx(f.id), '');
    assert.equal(await balance(jb.team), '8.00');
    // the team's ledger of credits: the top-up and two jobs
    assert.equal(pg.query("SELECT string_agg(kind || ':' || amount_nano, ',' ORDER BY id) FROM credit_transactions WHERE team_id = :'p1'::uuid", [jb.team.id]).trim(),
      'topup:10000000000,job:-1000000000,job:-1000000000');

    // a consumption_usd team: completing charges nothing
    assert.equal((await admin.get('teams', cu.team.id)).budget_mode, 'consumption_usd');
    const before = await balance(cu.team);
    const k = await createJob(gwA, cu.secret, { type: 'free' });
    const kr = await api(gwA, 'POST', `/v1/jobs/${k.id}/complete`, { key: cu.secret });
    assert.equal(kr.status, 200, kr.text);
    assert.equal(kr.body.credits_charged, '0.00');
    assert.equal(jobTx(k.id), '');
    assert.equal(await balance(cu.team), before);
    // nor does a config key's job (no team)
    const ck = await createJob(gwA, KEY, { type: 'config' });
    assert.equal((await api(gwA, 'POST', `/v1/jobs/${ck.id}/complete`, { key: KEY })).status, 200);
    assert.equal(jobTx(ck.id), '');
  });
});

/* ------------------------------------------------------- 6. two instances */

describe('two instances', () => {
  for (const upper of [false, true]) {
    it(`B attaches at once to A's job and refuses it within 1 s after A completed it${upper ? ' (id in capitals)' : ''}`, T, async () => {
      const j = await createJob(gwA, ta.secret, { type: 'shared' });
      const id = upper ? j.id.toUpperCase() : j.id;
      const first = await chat(gwB, ta.secret, id);
      assert.equal(first.status, 200, `B's first call: ${first.text}`);
      assert.equal((await chat(gwB, ta.secret, id, { stream: true })).status, 200);
      const done = await api(gwA, 'POST', `/v1/jobs/${j.id}/complete`, { key: ta.secret });
      assert.equal(done.status, 200, done.text);
      let served = 2;
      const p = await pollUntil(async () => {
        const c = await chat(gwB, ta.secret, id);
        if (c.status === 200) served++;
        return { ok: c.status === 409, c };
      }, { limitMs: 3000, everyMs: 20 });
      assert.ok(p.ms < PROPAGATION_MS, `B refuses within ${PROPAGATION_MS} ms; took ${p.ms} ms (last ${p.last.c.status} ${p.last.c.text})`);
      expectError(p.last.c, 409, 'job_not_running', 'B after complete');
      expectError(await chat(gwB, ta.secret, id.toLowerCase()), 409, 'job_not_running', 'B, lower case');
      expectError(await chat(gwA, ta.secret, id), 409, 'job_not_running', 'A');
      // every call B served while it was running is the job's
      const s = await summaryWithCalls(gwB, ta.secret, j.id, served);
      assert.equal(s.status, 'completed');
    });
  }

  it('a job created on B is seen and ended on A', T, async () => {
    const j = await createJob(gwB, ta.secret, { type: 'from-b' });
    assert.equal((await chat(gwA, ta.secret, j.id)).status, 200);
    const g = await api(gwA, 'GET', `/v1/jobs/${j.id}`, { key: ta.secret });
    assert.equal(g.status, 200, g.text);
    assert.equal((await api(gwA, 'POST', `/v1/jobs/${j.id}/fail`, { key: ta.secret })).status, 200);
    const p = await pollUntil(async () => ({ ok: (await chat(gwB, ta.secret, j.id)).status === 409 }), { limitMs: 3000 });
    assert.ok(p.ms < PROPAGATION_MS, `B refuses its own job within ${PROPAGATION_MS} ms after A failed it; took ${p.ms}`);
  });
});

/* ------------------------------------------------------ 7. the seed paths */

describe('the seed\'s paths', () => {
  it('/api/jobs/create, llm-call (openai SDK), llm-call-stream, complete, /api/teams/{id}/usage', T, async () => {
    const ts = await makeTenant(admin, 'seed');
    const cr = await api(gwA, 'POST', '/api/jobs/create', { key: ts.secret, body: { type: 'seed-op', metadata: { k: 'v' } } });
    assert.equal(cr.status, 201, cr.text);
    const j = cr.body;
    assert.equal(j.object, 'job');
    assert.equal(j.team_id, ts.team.id);
    expectError(await api(gwA, 'POST', '/api/jobs/create', { key: ts.secret, body: { nope: 1 } }), 400, 'invalid_field', 'seed create, bad body');
    expectError(await api(gwA, 'GET', '/api/jobs/create', { key: ts.secret }), 405, 'method_not_allowed', 'GET /api/jobs/create');

    // the openai SDK pointed at the job; its chat/completions goes to llm-call(-stream)
    const seen = [];
    const client = new OpenAI({
      apiKey: ts.secret,
      baseURL: gwA.url(`/api/jobs/${j.id}/`),
      maxRetries: 0,
      timeout: 5000,
      fetch: (url, init) => {
        const body = JSON.parse(init.body);
        const u = String(url).replace(/\/chat\/completions$/, body.stream ? '/llm-call-stream' : '/llm-call');
        seen.push(new URL(u).pathname);
        return fetch(u, init);
      },
    });
    const completion = await client.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'seed call' }] });
    assert.equal(completion.object, 'chat.completion');
    assert.ok(completion.choices[0].message.content.length > 0);
    assert.ok(completion.usage.prompt_tokens > 0);
    const stream = await client.chat.completions.create({ model: 'mock-1', messages: [{ role: 'user', content: 'seed stream' }], stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    assert.ok(text.length > 0);
    assert.ok(usage?.completion_tokens > 0);
    assert.deepEqual(seen, [`/api/jobs/${j.id}/llm-call`, `/api/jobs/${j.id}/llm-call-stream`]);

    // llm-call-stream needs "stream": true
    const ns = await chat(gwA, ts.secret, null, { path: `/api/jobs/${j.id}/llm-call-stream` });
    expectError(ns, 400, 'stream_required', 'llm-call-stream without stream');
    const st = await chat(gwA, ts.secret, null, { path: `/api/jobs/${j.id}/llm-call-stream`, stream: true });
    assert.equal(st.status, 200, st.text);
    assert.ok(st.text.trimEnd().endsWith('data: [DONE]'), st.text);
    // llm-call answers a stream too when asked for one
    const ls = await chat(gwA, ts.secret, null, { path: `/api/jobs/${j.id}/llm-call`, stream: true });
    assert.equal(ls.status, 200, ls.text);
    expectError(await api(gwA, 'GET', `/api/jobs/${j.id}/llm-call`, { key: ts.secret }), 405, 'method_not_allowed', 'GET llm-call');
    expectError(await chat(gwA, ts.secret, null, { path: '/api/jobs/not-a-job/llm-call' }), 400, 'invalid_job_id', 'llm-call, bad id');
    expectError(await chat(gwA, ts.secret, null, { path: `/api/jobs/${crypto.randomUUID()}/llm-call` }), 404, 'job_not_found', 'llm-call, unknown id');
    // the path's job wins over a header naming another
    const other = await createJob(gwA, ts.secret, { type: 'other' });
    const both = await chat(gwA, ts.secret, other.id, { path: `/api/jobs/${j.id}/llm-call` });
    assert.equal(both.status, 200, both.text);

    const s = await summaryWithCalls(gwA, ts.secret, j.id, 5);
    const sum = callsSums(pg, j.id);
    assert.equal(BigInt(s.prompt_tokens), sum.prompt);
    assert.equal(s.price, usd(sum.prompt * IN_NANO + sum.completion * OUT_NANO));
    assert.equal(countCalls(pg, "job_id = :'p1'::uuid", [other.id]), 0);
    assert.equal(countCalls(pg, "request_id = :'p1' AND job_id = :'p2'::uuid", [both.id, j.id]), 1);

    const done = await api(gwA, 'POST', `/api/jobs/${j.id}/complete`, { key: ts.secret });
    assert.equal(done.status, 200, done.text);
    assert.equal(done.body.status, 'completed');
    assert.equal(done.body.calls, 5);
    expectError(await api(gwA, 'POST', `/api/jobs/${j.id}/complete`, { key: ts.secret }), 409, 'job_not_running', 'seed complete twice');
    expectError(await chat(gwA, ts.secret, null, { path: `/api/jobs/${j.id}/llm-call` }), 409, 'job_not_running', 'llm-call after complete');

    // usage of the caller's own team equals its calls rows
    const want = pg.query("SELECT count(*), sum(prompt_tokens), sum(completion_tokens), sum(price_nano) FROM calls WHERE team_id = :'p1'::uuid", [ts.team.id]).trim().split('|');
    assert.equal(want[0], '5');
    const u = await api(gwA, 'GET', `/api/teams/${ts.team.id}/usage`, { key: ts.secret });
    assert.equal(u.status, 200, u.text);
    assert.equal(u.body.object, 'team_usage');
    assert.equal(u.body.team_id, ts.team.id);
    assert.equal(u.body.requests, Number(want[0]));
    assert.equal(u.body.prompt_tokens, Number(want[1]));
    assert.equal(u.body.completion_tokens, Number(want[2]));
    assert.equal(u.body.price, usd(want[3]));
    assert.equal(u.body.errors, 0);
    // a consumption_usd team pays its calls from its credits (none topped up: negative)
    assert.equal(u.body.credit_balance, usd(String(-Number(want[3]))));
    // another team's, an unknown one, a config key: 404
    expectError(await api(gwA, 'GET', `/api/teams/${ta.team.id}/usage`, { key: ts.secret }), 404, 'team_not_found', 'other team usage');
    expectError(await api(gwA, 'GET', `/api/teams/${ts.team.id}/usage`, { key: ta.secret }), 404, 'team_not_found', 'usage by another team');
    expectError(await api(gwA, 'GET', `/api/teams/${crypto.randomUUID()}/usage`, { key: ts.secret }), 404, 'team_not_found', 'unknown team usage');
    expectError(await api(gwA, 'GET', `/api/teams/${ts.team.id}/usage`, { key: KEY }), 404, 'team_not_found', 'usage by a config key');
    expectError(await api(gwA, 'POST', `/api/teams/${ts.team.id}/usage`, { key: ts.secret }), 405, 'method_not_allowed', 'POST usage');
    assert.equal((await api(gwA, 'GET', `/api/teams/${ts.team.id}/usage`, { key: null })).status, 401);
  });
});

/* -------------------------------------------------------------- 8. errors */

describe('errors', () => {
  it('a malformed job id is 400 invalid_job_id, an unknown one 404; nothing is recorded', T, async () => {
    const bad = ['nope', '', ' ', '123', `${crypto.randomUUID()}x`, crypto.randomUUID().replaceAll('-', ''), `{${crypto.randomUUID()}}`, 'zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz'];
    const refused = [];
    for (const id of bad) {
      if (id.trim() === '') continue; // an empty header is no job
      const c = await chat(gwA, ta.secret, id);
      expectError(c, 400, 'invalid_job_id', `x-tollgate-job: ${JSON.stringify(id)}`);
      refused.push(c);
    }
    for (const gw of [gwA, gwB]) {
      const c = await chat(gw, ta.secret, crypto.randomUUID());
      expectError(c, 404, 'job_not_found', 'unknown job');
      refused.push(c);
      const s = await chat(gw, ta.secret, crypto.randomUUID(), { stream: true });
      expectError(s, 404, 'job_not_found', 'unknown job, stream');
      refused.push(s);
    }
    // the Anthropic route refuses an unknown job the same way
    const m = await api(gwA, 'POST', '/v1/messages', {
      key: ta.secret,
      headers: { 'x-tollgate-job': crypto.randomUUID() },
      body: { model: 'mock-1', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] },
    });
    assert.equal(m.status, 404, m.text);
    // the ledger ships a later good call; none of the refused ones
    const ok = await chat(gwA, ta.secret, null);
    const shipped = await pollUntil(async () => ({ ok: countCalls(pg, "request_id = :'p1'", [ok.id]) === 1 }), { limitMs: 8000, everyMs: 100 });
    assert.ok(shipped.ms < Infinity);
    for (const c of refused) assert.equal(countCalls(pg, "request_id = :'p1'", [c.id]), 0, `${c.id} not recorded`);
  });

  it('without a database: jobs answer 503 no_database', T, async () => {
    const gw = await startGateway(baseConfig('https://127.0.0.1:9'));
    try {
      expectError(await api(gw, 'POST', '/v1/jobs', { body: { type: 't' } }), 503, 'no_database', 'POST /v1/jobs');
      expectError(await api(gw, 'POST', '/api/jobs/create', { body: { type: 't' } }), 503, 'no_database', 'POST /api/jobs/create');
      expectError(await api(gw, 'GET', `/v1/jobs/${crypto.randomUUID()}`), 503, 'no_database', 'GET /v1/jobs/{id}');
      expectError(await api(gw, 'GET', `/api/teams/${crypto.randomUUID()}/usage`), 503, 'no_database', 'usage');
      expectError(await chat(gw, KEY, crypto.randomUUID()), 503, 'no_database', 'x-tollgate-job');
      expectError(await chat(gw, KEY, crypto.randomUUID(), { stream: true }), 503, 'no_database', 'x-tollgate-job, stream');
      expectError(await chat(gw, KEY, null, { path: `/api/jobs/${crypto.randomUUID()}/llm-call` }), 503, 'no_database', 'llm-call');
      assert.equal((await chat(gw, KEY, null)).status, 200, 'calls without a job still work');
    } finally {
      const exit = await gw.stop();
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.deepEqual(gw.sanitizerReports(), []);
    }
  });
});

/* ---------------------------------------------------------------- 9. exit */

describe('shutdown', () => {
  it('SIGTERM: both instances exit 0 without sanitizer reports', T, async () => {
    for (const gw of [gwA, gwB]) {
      gw.signal('SIGTERM');
      const exit = await gw.waitExit(10000);
      assert.deepEqual(exit, { code: 0, signal: null }, gw.stderr.slice(-3000));
      assert.deepEqual(gw.sanitizerReports(), [], gw.stderr.slice(-3000));
      assert.deepEqual(gw.stdoutGarbage, []);
    }
  });
});
