// rolling.test.mjs - a rolling restart without errors (issue 8): two tollgate
// instances on one PostgreSQL behind nginx (lib/nginx.mjs: upstream
// keep-alive, proxy_next_upstream, no buffering), steady streaming and
// non-streaming load (OpenAI chat completions and Anthropic messages, SSE
// and whole bodies) on a key whose team has a budget, and each instance
// restarted in turn while the load runs: SIGTERM, wait for the exit (0, no
// sanitizer report, the ledger shipped), start it again on the same port
// with the same config, wait for /health/ready, then the other one.
//
// Asserted:
//   - zero failed client requests: every call is a 200 with a whole,
//     well-formed body (a stream ends with [DONE] / message_stop), its own
//     x-request-id echoed; no connection error, no truncated stream;
//   - zero lost ledger rows: every call the client saw succeed is in the
//     `calls` table exactly once (by request id), and nothing else is;
//   - no budget overspend: the settled spend (sum of price_nano) is within
//     the team's max_budget, budgets.spent_nano equals it, and once both
//     instances have stopped no lease is left and nothing was assumed.
//
// TG_IT_ROLLING_PHASE_MS sets the length of each load phase (default 5000);
// TG_IT_NGINX_SERVER the parameters of nginx's `server` lines (default
// max_fails=0; `max_fails=1 fail_timeout=2s` as in examples/compose passes
// too).
//
// Price: mock-1 at 1.00 / 2.00 USD per 1M tokens; a call (short prompt,
// 16 tokens out) is about 40,000 nano. The pacing below bounds the run to
// about 800 calls; the budget (0.05 USD, 1,250 such calls) is sized so that
// the run uses a good part of it without running out.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import crypto from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { startGateway, sleep } from './lib/gateway.mjs';
import { startMigratedPg, dbConfig, waitReady, adminClient, makeTenant } from './lib/tenancy.mjs';
import { startNginx, freePort } from './lib/nginx.mjs';

const PHASE_MS = Number(process.env.TG_IT_ROLLING_PHASE_MS ?? 5000); // load before, between, after
const WORKERS = 10;          // concurrent client loops
const PACE_MS = 250;         // a loop starts at most one call per PACE_MS
const BUDGET_USD = '0.05';
const BUDGET_NANO = 50_000_000;

/** The config of instance `name` on 127.0.0.1:port (the same at every start). */
function instanceConfig(pg, name, port) {
  return dbConfig(pg, {
    patch: (cfg) => {
      cfg.listen = `127.0.0.1:${port}`;
      cfg.instance_id = name;
      const m = cfg.models.find((x) => x.name === 'mock-1');
      m.price = { input: '1.00', output: '2.00' };
      // 16 tokens at 80/s: a stream lasts ~0.2 s, so some are always in
      // flight when a SIGTERM comes
      cfg.providers.find((p) => p.name === 'mock').mock = { tokens_per_sec: 80 };
      cfg.ledger = { ship_interval: '50ms' };
      cfg.budgets = {};
      cfg.timeouts.idle = '5s';   // nginx's upstream keepalive_timeout is 4s
      cfg.timeouts.drain = '10s';
    },
  });
}

/* ------------------------------------------------------------- the client */

const KINDS = ['chat-stream', 'chat', 'messages-stream', 'chat-stream', 'messages', 'chat'];

/** Splits an SSE body into events: [{event, data}]. */
function sseEvents(text) {
  return text.split('\n\n').filter((e) => e.trim() !== '').map((block) => {
    const ev = { event: null, data: [] };
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) ev.event = line.slice(6).trim();
      else if (line.startsWith('data:')) ev.data.push(line.slice(5).replace(/^ /, ''));
    }
    ev.data = ev.data.join('\n');
    return ev;
  });
}

/** Why the answer to a call of `kind` is not a success, or null. */
function problemOf(kind, r) {
  if (r.status !== 200) return `status ${r.status}: ${r.text.slice(0, 300)}`;
  if (r.headers['x-request-id'] !== r.id) return `x-request-id ${r.headers['x-request-id']} for ${r.id}`;
  const stream = kind.endsWith('-stream');
  const ctype = r.headers['content-type'] ?? '';
  if (!stream) {
    let j;
    try {
      j = JSON.parse(r.text);
    } catch {
      return `malformed JSON body: ${r.text.slice(0, 300)}`;
    }
    if (kind === 'chat') {
      if (typeof j?.choices?.[0]?.message?.content !== 'string' || !j.usage) return `not a chat completion: ${r.text.slice(0, 300)}`;
    } else if (j?.type !== 'message' || j?.content?.[0]?.type !== 'text' || !j.usage) {
      return `not a message: ${r.text.slice(0, 300)}`;
    }
    return null;
  }
  if (!ctype.startsWith('text/event-stream')) return `content-type ${ctype}`;
  const events = sseEvents(r.text);
  if (events.length < 3) return `only ${events.length} events: ${JSON.stringify(r.text.slice(-300))}`;
  if (kind === 'chat-stream') {
    if (!r.text.endsWith('data: [DONE]\n\n')) return `truncated stream (no [DONE]): ${JSON.stringify(r.text.slice(-300))}`;
    let content = 0;
    for (const e of events.slice(0, -1)) {
      let j;
      try {
        j = JSON.parse(e.data);
      } catch {
        return `malformed event ${JSON.stringify(e.data.slice(0, 200))}`;
      }
      if (j.error) return `error event ${e.data.slice(0, 300)}`;
      if (j.choices?.[0]?.delta?.content) content++;
    }
    return content > 0 ? null : 'a stream without content';
  }
  const last = events[events.length - 1];
  if (last.event !== 'message_stop') return `truncated stream (no message_stop): ${JSON.stringify(r.text.slice(-300))}`;
  for (const e of events) {
    if (e.event === 'error') return `error event ${e.data.slice(0, 300)}`;
    try {
      JSON.parse(e.data);
    } catch {
      return `malformed event ${JSON.stringify(e.data.slice(0, 200))}`;
    }
  }
  return events.some((e) => e.event === 'content_block_delta') ? null : 'a stream without content';
}

/** One call through nginx; always resolves: {id, kind, status, problem, ms, upstream}. */
function call(port, key, kind, agent, id) {
  const anth = kind.startsWith('messages');
  const stream = kind.endsWith('-stream');
  const body = JSON.stringify({ model: 'mock-1', max_tokens: 16, ...(stream ? { stream: true } : {}), messages: [{ role: 'user', content: 'Hi' }] });
  const t0 = performance.now();
  return new Promise((resolve) => {
    let settled = false;
    const done = (r) => {
      if (settled) return;
      settled = true;
      resolve({ id, kind, ms: performance.now() - t0, t0, ...r });
    };
    const req = http.request({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: anth ? '/v1/messages' : '/v1/chat/completions',
      agent,
      headers: {
        ...(anth ? { 'x-api-key': key, 'anthropic-version': '2023-06-01' } : { authorization: `Bearer ${key}` }),
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        'x-request-id': id,
      },
      timeout: 20000,
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => {
        const r = { id, status: res.statusCode, text, headers: res.headers };
        done({ status: res.statusCode, upstream: res.headers['x-upstream-addr'], problem: problemOf(kind, r) });
      });
      res.on('close', () => {
        if (!res.complete) done({ status: res.statusCode, problem: `truncated response (connection closed after ${text.length} bytes)` });
      });
      res.on('error', (e) => done({ status: res.statusCode, problem: `response error: ${e.code ?? e.message}` }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 20 s')));
    req.on('error', (e) => done({ status: null, problem: `connection error: ${e.code ?? e.message}` }));
    req.end(body);
  });
}

/** WORKERS loops calling through nginx until stop(); phase() names the current phase. */
function startLoad(port, key, phase) {
  const results = [];
  let stopping = false;
  let seq = 0;
  const agent = new http.Agent({ keepAlive: true, maxSockets: WORKERS });
  const run = crypto.randomBytes(4).toString('hex');
  const loops = Array.from({ length: WORKERS }, async (_, w) => {
    while (!stopping) {
      const n = seq++;
      const kind = KINDS[n % KINDS.length];
      const t0 = performance.now();
      const p = phase();
      const r = await call(port, key, kind, agent, `roll-${run}-${w}-${n}`);
      r.phase = p;
      results.push(r);
      const wait = PACE_MS - (performance.now() - t0);
      if (wait > 0 && !stopping) await sleep(wait);
    }
  });
  return {
    results,
    async stop() {
      stopping = true;
      await Promise.all(loops);
      agent.destroy();
      return results;
    },
  };
}

/* --------------------------------------------------------------- helpers */

const one = (pg, sql, params) => pg.query(sql, params).trim();

/** The budgets row of a team: {max, spent, leased, assumed}. */
function budgetRow(pg, teamId) {
  const out = one(pg, "SELECT max_nano, spent_nano, leased_nano, assumed_nano FROM budgets WHERE scope = 'team' AND scope_id = :'p1'::uuid", [teamId]);
  assert.ok(out, `no budgets row for team ${teamId}`);
  const [max, spent, leased, assumed] = out.split('|').map(Number);
  return { max, spent, leased, assumed };
}

/** request_id -> {n, price, status} over the team's rows in the ledger. */
function ledgerRows(pg, teamId) {
  const out = one(pg, "SELECT request_id, count(*), coalesce(sum(price_nano), 0), string_agg(DISTINCT status::text, ',') " +
    "FROM calls WHERE team_id = :'p1'::uuid GROUP BY request_id", [teamId]);
  const m = new Map();
  for (const line of out.split('\n').filter(Boolean)) {
    const [id, n, price, status] = line.split('|');
    m.set(id, { n: Number(n), price: Number(price), status });
  }
  return m;
}

/** Stops gw by SIGTERM; asserts exit 0, no sanitizer report and a shipped ledger. */
async function drainClean(gw, what) {
  if (!gw.exit) gw.signal('SIGTERM');
  const exit = await gw.waitExit(15000);
  const tail = gw.stderrLines.slice(-30).join('\n');
  assert.deepEqual(exit, { code: 0, signal: null }, `${what}: exit status; stderr:\n${tail}`);
  assert.deepEqual(gw.sanitizerReports(), [], `${what}: sanitizer reports`);
  const shipped = gw.stderrLines.find((l) => /ledger drained/.test(l));
  assert.match(shipped ?? '', / 0 bytes left in the spool/, `${what}: the ledger shipped before the exit; stderr:\n${tail}`);
  await gw.stop(); // removes its temp dir
}

/* ------------------------------------------------------------------ test */

describe('rolling restart behind nginx', () => {
  let pg;
  let ngx;
  const gws = [];
  after(async () => {
    await ngx?.stop();
    for (const gw of gws) await gw?.stop().catch(() => {});
    pg?.stop();
  });

  it('two instances restarted in turn under load: no failed request, no lost ledger row, no overspend', { timeout: 90000 }, async (t) => {
    const t00 = performance.now();
    pg = await startMigratedPg();
    const names = ['roll-a', 'roll-b'];
    const ports = [];
    for (const name of names) {
      // a free port, kept for every start of this instance
      for (let attempt = 0; ; attempt++) {
        const port = await freePort();
        try {
          gws.push(await startGateway(instanceConfig(pg, name, port)));
          ports.push(port);
          break;
        } catch (e) {
          if (attempt >= 3 || !/address already in use/i.test(e.message)) throw e;
        }
      }
    }
    await Promise.all(gws.map((gw) => waitReady(gw)));
    const admin = adminClient(gws[0]);
    const ten = await makeTenant(admin, 'rolling');
    await admin.update('teams', ten.team.id, { max_budget: BUDGET_USD, budget_duration: '1d' });
    assert.equal(budgetRow(pg, ten.team.id).max, BUDGET_NANO);
    // both instances know the key and the team's budget before the load
    for (const gw of gws) {
      const until = performance.now() + 5000;
      for (;;) {
        const r = await fetch(gw.url('/v1/models'), { headers: { authorization: `Bearer ${ten.secret}` } });
        if (r.status === 200) break;
        assert.ok(performance.now() < until, `key unknown to ${gw.port}: ${r.status}`);
        await sleep(50);
      }
    }
    ngx = await startNginx({ upstreams: ports, ...(process.env.TG_IT_NGINX_SERVER ? { serverParams: process.env.TG_IT_NGINX_SERVER } : {}) });
    t.diagnostic(`setup ${(performance.now() - t00).toFixed(0)} ms: instances on ${ports.join(', ')}, nginx on ${ngx.port}`);

    let phase = 'before';
    const load = startLoad(ngx.port, ten.secret, () => phase);
    const timeline = [];
    const restart = async (i) => {
      const t0 = performance.now();
      phase = `drain ${names[i]}`;
      await drainClean(gws[i], `${names[i]} (pid ${gws[i].pid})`);
      const t1 = performance.now();
      phase = `down ${names[i]}`;
      gws[i] = await startGateway(instanceConfig(pg, names[i], ports[i]));
      phase = `starting ${names[i]}`;
      await waitReady(gws[i]);
      const t2 = performance.now();
      timeline.push(`${names[i]}: drained in ${(t1 - t0).toFixed(0)} ms, ready ${(t2 - t1).toFixed(0)} ms later`);
    };
    await sleep(PHASE_MS);
    await restart(0);
    phase = 'between';
    await sleep(PHASE_MS);
    await restart(1);
    phase = 'after';
    await sleep(PHASE_MS);
    const results = await load.stop();
    const tLoad = performance.now();

    // ---- the client's view
    const by = {};
    for (const r of results) {
      const k = `${r.phase}`;
      by[k] ??= { n: 0, failed: 0 };
      by[k].n++;
      if (r.problem) by[k].failed++;
    }
    const upstreams = {};
    for (const r of results) upstreams[r.upstream ?? 'none'] = (upstreams[r.upstream ?? 'none'] ?? 0) + 1;
    const failed = results.filter((r) => r.problem);
    t.diagnostic(`${results.length} calls, ${failed.length} failed; by phase ${JSON.stringify(by)}`);
    t.diagnostic(`restarts: ${timeline.join('; ')}`);
    t.diagnostic(`answered by (nginx x-upstream-addr): ${JSON.stringify(upstreams)}`);
    const retried = ngx.accessLog().filter((e) => String(e.upstream_addr).includes(','));
    t.diagnostic(`nginx went on to the other instance for ${retried.length} calls`);
    const ngxErrors = ngx.errorLog().split('\n').filter((l) => /\[(error|crit|alert|emerg)\]/.test(l));
    if (failed.length) {
      t.diagnostic(`nginx error log:\n${ngxErrors.slice(0, 20).join('\n')}`);
    }
    assert.deepEqual(failed.slice(0, 10).map((r) => `${r.id} ${r.kind} (${r.phase}, ${r.upstream ?? '?'}): ${r.problem}`), [],
      `${failed.length} of ${results.length} client requests failed`);
    assert.ok(results.length >= 100, `only ${results.length} calls`);
    for (const k of KINDS) assert.ok(results.some((r) => r.kind === k), `no ${k} call`);

    // ---- the ledger: every success exactly once, nothing else
    const ok = new Set(results.filter((r) => !r.problem).map((r) => r.id));
    let rows;
    const until = performance.now() + 10000;
    for (;;) {
      rows = ledgerRows(pg, ten.team.id);
      if ([...ok].every((id) => rows.has(id)) || performance.now() > until) break;
      await sleep(100);
    }
    const missing = [...ok].filter((id) => !rows.has(id));
    const dup = [...rows].filter(([, v]) => v.n !== 1);
    const extra = [...rows.keys()].filter((id) => !ok.has(id));
    const not200 = [...rows].filter(([, v]) => v.status !== '200');
    t.diagnostic(`ledger: ${rows.size} request ids, ${missing.length} missing, ${dup.length} duplicated, ${extra.length} unknown`);
    assert.deepEqual(missing.slice(0, 10), [], `${missing.length} successful calls missing from the ledger`);
    assert.deepEqual(dup.slice(0, 10).map(([id, v]) => `${id} x${v.n}`), [], 'a request id more than once in the ledger');
    assert.deepEqual(extra.slice(0, 10), [], 'ledger rows of calls the client did not see succeed');
    assert.deepEqual(not200.slice(0, 10), [], 'ledger rows with a status other than 200');
    const settled = [...rows.values()].reduce((s, v) => s + v.price, 0);

    // ---- both stop: every lease back, the spend reported, within the budget
    for (let i = 0; i < gws.length; i++) await drainClean(gws[i], `${names[i]} at the end`);
    await ngx.stop();
    const leases = one(pg, "SELECT string_agg(scope || ' ' || instance || ':' || amount_nano, ',') FROM budget_leases");
    const row = budgetRow(pg, ten.team.id);
    t.diagnostic(`budget: ${settled} nano settled of ${row.max} (${((100 * settled) / row.max).toFixed(1)}%), ` +
      `budgets row ${JSON.stringify(row)}; load ${((tLoad - t00) / 1000).toFixed(1)} s after the start, total ${((performance.now() - t00) / 1000).toFixed(1)} s`);
    assert.equal(leases, '', 'no lease left after both instances stopped');
    assert.ok(settled <= row.max, `settled ${settled} nano over the budget ${row.max}`);
    assert.equal(row.spent, settled, 'budgets.spent_nano is the sum of the ledger prices');
    assert.equal(row.leased, 0);
    assert.equal(row.assumed, 0, 'nothing assumed: every lease was returned');
    assert.ok(settled >= row.max / 5, `the run used ${settled} of ${row.max}: size the budget to the load`);
  });
});
