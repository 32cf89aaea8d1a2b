// ledger.test.mjs - the usage ledger (billing/ledger.h) against a real
// PostgreSQL: one row per call in `calls`, never lost, never counted twice.
//   1. sustained load (40 clients, streams and whole answers) while the
//      database is stopped and started again, fast (-m fast) and as a crash
//      (-m immediate): every call a client saw succeed has exactly one row,
//      and usage_daily adds up to the calls;
//   2. SIGKILL with rows only in the spool: the next start on the same
//      spool ships them, once, with the first instance's id;
//   3. money: BYOK calls cost but are not charged, org credentials are
//      charged at cost (a configured price, no catalog entry);
//   4. DB-less: the spool is the ledger, one JSON line per call;
//   5. a full spool (database away, spool_max_bytes at its minimum) turns
//      new calls away with 503 ledger_unavailable, until it drains;
//   6. SIGTERM: the rows of the last calls reach the database before exit 0;
//   7. spooled rows the database refuses go to rejected.jsonl, the rest of
//      their batch arrives exact, also rows only the JSON statement carries.
// Every gateway ends without sanitizer reports.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { startGateway as startGw, baseConfig, newRequestId, sleep, KEY } from './lib/gateway.mjs';
import { startMigratedPg, startDbGateway as startDbGw, adminClient, makeTenant, waitReady } from './lib/tenancy.mjs';

const T = { timeout: 60000 };

/** One chat call; never throws (status 0: no answer). */
async function chat(gw, key, { model = 'mock-1', stream = false, id = newRequestId('led'), timeoutMs = 15000, maxTokens } = {}) {
  const body = { model, messages: [{ role: 'user', content: `Hello ${id}` }] };
  if (stream) body.stream = true;
  if (maxTokens) body.max_tokens = maxTokens;
  try {
    const r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'x-request-id': id },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await r.text();
    let json = null;
    try {
      json = stream ? null : JSON.parse(text);
    } catch {
      json = null;
    }
    return { id, status: r.status, text, body: json, stream, headers: r.headers };
  } catch (e) {
    return { id, status: 0, text: String(e), body: null, stream, headers: new Headers() };
  }
}

const ok2xx = (c) => c.status >= 200 && c.status < 300;

/** request_id -> number of rows in calls, for the ids given (all when null). */
function rowCounts(pg, ids = null) {
  const out = pg.query('SELECT request_id, count(*) FROM calls GROUP BY 1');
  const m = new Map();
  for (const line of out.split('\n')) {
    if (!line) continue;
    const [rid, n] = line.split('|');
    m.set(rid, Number(n));
  }
  if (!ids) return m;
  return new Map(ids.map((id) => [id, m.get(id) ?? 0]));
}

/** The rows of calls with these request ids, as objects. */
function rowsOf(pg, ids) {
  const out = pg.query(
    "SELECT coalesce(json_agg(c), '[]') FROM calls c WHERE request_id = ANY(string_to_array(:'p1', ','))",
    [ids.join(',')],
  );
  return JSON.parse(out);
}

/** Waits until every id has a row (or timeoutMs); the ids still missing. */
async function waitRows(pg, ids, timeoutMs = 20000) {
  const until = performance.now() + timeoutMs;
  let missing = ids;
  for (;;) {
    const m = rowCounts(pg, missing);
    missing = missing.filter((id) => m.get(id) === 0);
    if (!missing.length || performance.now() > until) return missing;
    await sleep(100);
  }
}

/** Waits until `SELECT count(*) FROM calls` holds still for quietMs. */
async function waitStable(pg, quietMs = 1500, limitMs = 20000) {
  const t0 = performance.now();
  let last = -1;
  let since = performance.now();
  for (;;) {
    const n = Number(pg.query('SELECT count(*) FROM calls').trim());
    if (n !== last) {
      last = n;
      since = performance.now();
    } else if (performance.now() - since >= quietMs) {
      return n;
    }
    if (performance.now() - t0 > limitMs) return n;
    await sleep(100);
  }
}

/** Every request id in calls at most once, and usage_daily adds up to calls. */
function assertLedgerConsistent(pg) {
  const dup = pg.query('SELECT request_id, count(*) FROM calls GROUP BY 1 HAVING count(*) > 1 LIMIT 5').trim();
  assert.equal(dup, '', `request ids with more than one row:\n${dup}`);
  const dupId = pg.query('SELECT id, count(*) FROM calls GROUP BY 1 HAVING count(*) > 1 LIMIT 5').trim();
  assert.equal(dupId, '', `call ids with more than one row:\n${dupId}`);
  const calls = pg.query(
    "SELECT count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), count(*) FILTER (WHERE status >= 400), coalesce(sum(price_nano), 0) FROM calls",
  ).trim();
  const daily = pg.query(
    'SELECT coalesce(sum(requests), 0), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(errors), 0), coalesce(sum(price_nano), 0) FROM usage_daily',
  ).trim();
  assert.equal(daily, calls, 'usage_daily (requests|prompt|completion|errors|price) = the sums over calls');
}

/** The segments of a spool: every line of every <seq>.jsonl, oldest first. */
function spoolLines(dir) {
  if (!fs.existsSync(dir)) return [];
  const files = fs.readdirSync(dir).filter((f) => /^[0-9a-f]{16}\.jsonl$/.test(f)).sort();
  const lines = [];
  for (const f of files) {
    const text = fs.readFileSync(path.join(dir, f), 'utf8');
    for (const l of text.split('\n')) if (l) lines.push(l);
  }
  return lines;
}

const SANITIZER = /AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:/;

function assertNoSanitizer(gw, what) {
  assert.deepEqual(gw.sanitizerReports(), [], `${what}: sanitizer reports`);
  assert.ok(!SANITIZER.test(gw.stderr), `${what}: sanitizer output:\n${gw.stderr.slice(-3000)}`);
}

/** SIGTERM and a clean exit (code 0), no sanitizer report. */
async function stopClean(gw, what) {
  if (!gw || gw.exit) return;
  gw.signal('SIGTERM');
  const ex = await gw.waitExit(15000);
  assert.deepEqual(ex, { code: 0, signal: null }, `${what}: exit status; stderr:\n${gw.stderr.slice(-2000)}`);
  assertNoSanitizer(gw, what);
}

// Every gateway of the file, stopped and its temp dir removed at the end
// (stop() is idempotent), whatever the tests did with it.
const gateways = [];
const startGateway = async (...a) => { const g = await startGw(...a); gateways.push(g); return g; };
const startDbGateway = async (...a) => { const g = await startDbGw(...a); gateways.push(g); return g; };

let pg;
before(async () => {
  pg = await startMigratedPg();
  // The test cluster runs with synchronous_commit=off (pgtmp.sh): a crash
  // (-m immediate) may then lose transactions the server already
  // acknowledged, and the ledger deletes what was acknowledged. Production
  // databases commit synchronously; so do the gateway's sessions here.
  pg.query('ALTER DATABASE tollgate SET synchronous_commit = on');
});
after(async () => {
  await Promise.all(gateways.map((g) => g.stop()));
  pg?.stop();
});

/* ------------------------------------------------------------ 1. load + outage */

describe('sustained load with the database stopped and started', () => {
  let gw;
  let tenant;
  before(async () => {
    gw = await startDbGateway(pg, { patch: (cfg) => { cfg.ledger = { ship_interval: '50ms' }; } });
    tenant = await makeTenant(adminClient(gw), 'load');
  });
  after(async () => {
    await stopClean(gw, 'load gateway');
    await gw?.stop();
  });

  async function loadWithOutage(t, { immediate }) {
    const tag = immediate ? 'imm' : 'fast';
    const results = [];
    const t0 = performance.now();
    const deadline = t0 + 6000;
    let n = 0;
    const worker = async (w) => {
      while (performance.now() < deadline) {
        const k = n++;
        const key = k % 3 === 0 ? tenant.secret : KEY;
        results.push(await chat(gw, key, { stream: k % 2 === 0, id: `${tag}-${w}-${k}`, maxTokens: 1 + (k % 7) }));
      }
    };
    const outage = (async () => {
      await sleep(2000);
      const p0 = performance.now();
      await pg.pause({ immediate });
      t.diagnostic(`${tag}: stopped at ${(p0 - t0).toFixed(0)} ms (took ${(performance.now() - p0).toFixed(0)} ms)`);
      await sleep(2000);
      const r0 = performance.now();
      await pg.resume();
      t.diagnostic(`${tag}: started again at ${(r0 - t0).toFixed(0)} ms`);
    })();
    await Promise.all([...Array.from({ length: 40 }, (_, w) => worker(w)), outage]);
    const good = results.filter(ok2xx);
    const bad = results.filter((c) => !ok2xx(c));
    t.diagnostic(`${tag}: ${results.length} calls, ${good.length} 2xx, ${bad.length} others` +
      (bad.length ? ` (e.g. ${bad[0].status} ${bad[0].text.slice(0, 200)})` : ''));
    assert.ok(good.length > 200, `only ${good.length} calls succeeded`);
    // a gateway whose database is away still serves and records every call
    assert.equal(bad.length, 0, `calls that failed: ${bad.slice(0, 3).map((c) => `${c.status} ${c.text.slice(0, 120)}`).join('; ')}`);

    const missing = await waitRows(pg, good.map((c) => c.id), 30000);
    const total = await waitStable(pg, 1500);
    t.diagnostic(`${tag}: calls rows now ${total}`);
    assert.deepEqual(missing.slice(0, 10), [], `${missing.length} successful calls have no row`);
    const counts = rowCounts(pg, results.map((c) => c.id));
    const twice = [...counts].filter(([, k]) => k > 1);
    assert.deepEqual(twice.slice(0, 10), [], 'request ids with two rows');
    for (const c of good) assert.equal(counts.get(c.id), 1, `${c.id}: rows`);
    assertLedgerConsistent(pg);

    // the rows say what the clients saw: a sample of whole answers
    const sample = good.filter((c) => !c.stream && c.body?.usage).slice(0, 20);
    const rows = new Map(rowsOf(pg, sample.map((c) => c.id)).map((r) => [r.request_id, r]));
    for (const c of sample) {
      const r = rows.get(c.id);
      assert.equal(r.prompt_tokens, c.body.usage.prompt_tokens, `${c.id} prompt tokens`);
      assert.equal(r.completion_tokens, c.body.usage.completion_tokens, `${c.id} completion tokens`);
      assert.equal(r.status, 200);
      assert.equal(r.requested_model, 'mock-1');
      assert.equal(r.provider, 'mock');
      assert.equal(r.usage_source, 'provider');
    }
    assert.ok(gw.stderr.includes('ledger: shipping'), 'the outage was seen by the ledger');
    assertNoSanitizer(gw, tag);
  }

  it('pg_ctl stop -m fast in the middle: every successful call exactly once', { timeout: 60000 }, async (t) => {
    await loadWithOutage(t, { immediate: false });
  });

  it('pg_ctl stop -m immediate (a crash) in the middle: every successful call exactly once', { timeout: 60000 }, async (t) => {
    await waitReady(gw, 15000);
    await loadWithOutage(t, { immediate: true });
  });
});

/* ------------------------------------------------------------ 2. SIGKILL */

describe('SIGKILL with rows only in the spool', () => {
  let root;
  let a;
  let b;
  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'tg-ledger-kill-'));
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  it('the next start on the same spool ships them once, as the first instance', T, async () => {
    const spool = path.join(root, 'spool');
    const patch = (cfg) => { cfg.ledger = { spool_dir: spool, ship_interval: '50ms' }; };
    a = await startDbGateway(pg, { patch });
    const instance = fs.readFileSync(path.join(spool, 'instance'), 'utf8').trim();
    assert.match(instance, /\S+-[0-9a-f]{8}$/);
    let ids = [];
    await pg.pause();
    try {
      const calls = await Promise.all(Array.from({ length: 30 }, (_, i) => chat(a, KEY, { stream: i % 2 === 1, id: newRequestId('kill') })));
      assert.deepEqual(calls.filter((c) => !ok2xx(c)).map((c) => c.status), []);
      ids = calls.map((c) => c.id);
      // written and fsync'd within spool_interval (10 ms); wait for all of them
      const until = performance.now() + 5000;
      let lines = [];
      while (performance.now() < until) {
        lines = spoolLines(spool).map((l) => JSON.parse(l));
        if (ids.every((id) => lines.some((r) => r.request_id === id))) break;
        await sleep(50);
      }
      for (const id of ids) assert.equal(lines.filter((r) => r.request_id === id).length, 1, `${id} in the spool`);
      a.signal('SIGKILL');
      const ex = await a.waitExit(5000);
      assert.equal(ex.signal, 'SIGKILL');
      assertNoSanitizer(a, 'killed gateway');
    } finally {
      await pg.resume();
    }
    const early = [...rowCounts(pg, ids).values()].reduce((x, y) => x + y, 0);
    assert.equal(early, 0, 'no row reached the database before the kill');

    b = await startDbGateway(pg, { patch });
    assert.equal(fs.readFileSync(path.join(spool, 'instance'), 'utf8').trim(), instance, 'same instance id');
    const missing = await waitRows(pg, ids, 15000);
    assert.deepEqual(missing, [], 'rows of the killed gateway');
    await waitStable(pg, 500);
    const counts = rowCounts(pg, ids);
    for (const id of ids) assert.equal(counts.get(id), 1, `${id}: exactly one row`);
    for (const r of rowsOf(pg, ids)) {
      assert.equal(r.instance, instance, 'the instance that served the call');
      assert.equal(r.key_alias, 'test');
      assert.equal(r.credential, 'config');
    }
    // the replayed segments are gone once shipped
    const left = spoolLines(spool);
    assert.equal(left.length, 0, `spool still holds ${left.length} rows`);
    assertLedgerConsistent(pg);
    await stopClean(b, 'restarted gateway');
  });
});

describe('spooled rows the database refuses, and rows only JSON can carry', () => {
  let root;
  let a;
  let b;
  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'tg-ledger-odd-'));
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    fs.rmSync(root, { recursive: true, force: true });
  });

  // Batches go to the database as one array per column (daemon/ledger_cols.h),
  // or as JSON when the arrays cannot carry them exactly; either way a row the
  // database refuses ends in rejected.jsonl and the rest of its batch arrives.
  it('the good rows arrive with their exact values, each refused row is kept in rejected.jsonl', T, async () => {
    const spool = path.join(root, 'spool');
    const patch = (cfg) => { cfg.ledger = { spool_dir: spool, ship_interval: '50ms' }; };
    a = await startDbGateway(pg, { patch });
    await pg.pause();
    let base;
    const ids = [];
    try {
      const calls = await Promise.all(Array.from({ length: 4 }, () => chat(a, KEY, { id: newRequestId('odd') })));
      assert.deepEqual(calls.map((c) => c.status), [200, 200, 200, 200]);
      ids.push(...calls.map((c) => c.id));
      const until = performance.now() + 5000;
      let lines = [];
      while (performance.now() < until) {
        lines = spoolLines(spool).map((l) => JSON.parse(l));
        if (ids.every((id) => lines.some((r) => r.request_id === id))) break;
        await sleep(50);
      }
      base = lines.find((r) => r.request_id === ids[0]);
      assert.ok(base, 'a row of ours in the spool');
      a.signal('SIGKILL');
      await a.waitExit(5000);
    } finally {
      await pg.resume();
    }
    const odd = (tag, fields) => {
      const r = { ...base, ...fields, id: `odd${tag}${'0'.repeat(29 - tag.length)}`, request_id: newRequestId(`odd-${tag}`) };
      return r;
    };
    const tricky = 'q"uote \\ back {a,b} NULL ünï ✓ \n';
    const good = [
      odd('text', { key_alias: tricky, error: 'NULL', extra: { nested: [1, 2] } }),
      odd('exp', { latency_us: 1e3 }), // JSON.stringify writes 1000: made an exponent below
      odd('nulls', { ttft_us: null, upstream_status: null, error: null }),
    ];
    const bad = [
      odd('uuid', { key_id: 'not-a-uuid' }), // refused in a column batch
      odd('nul', { error: 'a\u0000b' }), // arrays cannot carry it: JSON, refused there too
      odd('frac', { latency_us: 1.5 }), // JSON; not a bigint
    ];
    const text = [...good, ...bad]
      .map((r) => JSON.stringify(r))
      .map((l) => l.replace('"latency_us":1000,', '"latency_us":1e3,'))
      .join('\n');
    assert.ok(text.includes('"latency_us":1e3'));
    const segs = fs.readdirSync(spool).filter((f) => /^[0-9a-f]{16}\.jsonl$/.test(f)).sort();
    fs.appendFileSync(path.join(spool, segs[segs.length - 1]), `${text}\n`);

    b = await startDbGateway(pg, { patch });
    const want = [...ids, ...good.map((r) => r.request_id)];
    assert.deepEqual(await waitRows(pg, want, 15000), [], 'the good rows');
    const until = performance.now() + 10000;
    let rejected = [];
    while (performance.now() < until) {
      const f = path.join(spool, 'rejected.jsonl');
      rejected = fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l).request_id) : [];
      if (rejected.length >= bad.length) break;
      await sleep(100);
    }
    assert.deepEqual(rejected.sort(), bad.map((r) => r.request_id).sort(), 'rejected.jsonl');
    assert.equal([...rowCounts(pg, bad.map((r) => r.request_id)).values()].reduce((x, y) => x + y, 0), 0);
    const rows = new Map(rowsOf(pg, want).map((r) => [r.request_id, r]));
    const t = rows.get(good[0].request_id);
    assert.equal(t.key_alias, tricky);
    assert.equal(t.error, 'NULL');
    assert.equal(t.key_id, base.key_id);
    assert.equal(rows.get(good[1].request_id).latency_us, 1000);
    const n = rows.get(good[2].request_id);
    assert.equal(n.ttft_us, null);
    assert.equal(n.upstream_status, null);
    assert.equal(n.error, null);
    for (const id of ids) {
      const r = rows.get(id);
      assert.equal(r.status, 200);
      assert.equal(r.completion_tokens, base.completion_tokens);
    }
    assert.deepEqual(spoolLines(spool), [], 'the spool is empty once shipped');
    assertLedgerConsistent(pg);
    await stopClean(b, 'restarted gateway');
  });
});

/* ------------------------------------------------------------ 3. money */

describe('cost and price per credential', () => {
  let gw;
  let admin;
  before(async () => {
    gw = await startDbGateway(pg, {
      patch: (cfg) => {
        cfg.ledger = { ship_interval: '20ms' };
        cfg.models.push({ name: 'priced-mock', provider: 'mock', model: 'mock-priced', price: { input: '1.00', output: '2.00' } });
      },
    });
    admin = adminClient(gw);
  });
  after(async () => {
    await stopClean(gw, 'money gateway');
    await gw?.stop();
  });

  it('BYOK: price 0 and the cost; org credential: price = cost; config key: price = cost', T, async () => {
    const byokKey = await makeTenant(admin, 'byok-key');
    await admin.create('byok', { key_id: byokKey.key.id, provider: 'mock', secret: 'sk-own-key-0123456789' });
    const byokTeam = await makeTenant(admin, 'byok-team');
    await admin.create('byok', { team_id: byokTeam.team.id, provider: 'mock', secret: 'sk-own-team-0123456789' });
    const org = await makeTenant(admin, 'org-cred');
    await admin.create('credentials', { org_id: org.org.id, provider: 'mock', name: 'main', secret: 'sk-org-0123456789', active: true });
    await sleep(300); // the cache hears of the new credentials

    const cases = [
      { who: byokKey.secret, credential: 'key_byok', charged: false },
      { who: byokTeam.secret, credential: 'team_byok', charged: false },
      { who: org.secret, credential: 'org', charged: true },
      { who: KEY, credential: 'config', charged: true },
    ];
    for (const c of cases) {
      c.calls = [];
      for (const stream of [false, true]) {
        const r = await chat(gw, c.who, { model: 'priced-mock', stream, maxTokens: 5 });
        assert.equal(r.status, 200, r.text);
        c.calls.push(r);
      }
    }
    const ids = cases.flatMap((c) => c.calls.map((r) => r.id));
    assert.deepEqual(await waitRows(pg, ids, 10000), []);
    const rows = new Map(rowsOf(pg, ids).map((r) => [r.request_id, r]));
    for (const c of cases) {
      for (const call of c.calls) {
        const r = rows.get(call.id);
        const log = await gw.accessLogFor(call.id);
        assert.equal(r.credential, c.credential, `${call.id} credential`);
        assert.equal(r.requested_model, 'priced-mock');
        assert.equal(r.provider_model, 'mock-priced');
        assert.equal(r.stream, call.stream);
        assert.equal(r.prompt_tokens, log.prompt_tokens);
        assert.equal(r.completion_tokens, log.completion_tokens);
        assert.ok(r.prompt_tokens > 0 && r.completion_tokens > 0, JSON.stringify(r));
        // USD 1.00 / 2.00 per million tokens: 1000 / 2000 nano-USD a token
        const cost = r.prompt_tokens * 1000 + r.completion_tokens * 2000;
        assert.equal(Number(r.cost_nano), cost, `${c.credential} cost`);
        assert.equal(Number(r.price_nano), c.charged ? cost : 0, `${c.credential} price`);
        if (c.credential !== 'config') {
          assert.ok(r.key_id && r.team_id && r.org_id, 'tenant ids recorded');
        } else {
          assert.equal(r.key_id, null);
        }
        if (call.stream) assert.ok(Number(r.ttft_us) >= 0, 'a stream has a first byte');
      }
    }
    assertLedgerConsistent(pg);
  });
});

/* ------------------------------------------------------------ 4. DB-less */

describe('DB-less: the spool is the ledger', () => {
  let gw;
  before(async () => {
    gw = await startGateway(baseConfig('https://127.0.0.1:9'));
  });
  after(async () => {
    await stopClean(gw, 'DB-less gateway');
    await gw?.stop();
  });

  it('one JSON row per call in <cwd>/tollgate-spool, with the call\'s fields', T, async () => {
    const spool = path.join(gw.dir, 'tollgate-spool');
    const instance = fs.readFileSync(path.join(spool, 'instance'), 'utf8').trim();
    const calls = [];
    for (let i = 0; i < 6; i++) calls.push(await chat(gw, KEY, { stream: i % 2 === 1, maxTokens: 3 + i }));
    calls.push(await chat(gw, 'tg-unknown-key', {})); // 401: not a call, no row
    assert.deepEqual(calls.map((c) => c.status), [200, 200, 200, 200, 200, 200, 401]);
    const until = performance.now() + 5000;
    let rows = [];
    while (performance.now() < until) {
      rows = spoolLines(spool).map((l) => JSON.parse(l));
      if (calls.slice(0, 6).every((c) => rows.some((r) => r.request_id === c.id))) break;
      await sleep(50);
    }
    for (const c of calls.slice(0, 6)) {
      const mine = rows.filter((r) => r.request_id === c.id);
      assert.equal(mine.length, 1, `${c.id}: one row`);
      const r = mine[0];
      const log = await gw.accessLogFor(c.id);
      assert.match(r.id, /^[0-9a-f]{32}$/);
      assert.match(r.at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
      assert.ok(Math.abs(Date.parse(r.at) - Date.now()) < 60000, 'at is now');
      assert.equal(r.instance, instance);
      assert.equal(r.key_id, null);
      assert.equal(r.key_alias, 'test');
      assert.equal(r.team_id, null);
      assert.equal(r.org_id, null);
      assert.equal(r.job_id, null);
      assert.equal(r.endpoint, 'chat');
      assert.equal(r.requested_model, 'mock-1');
      assert.equal(r.provider, 'mock');
      assert.equal(r.provider_model, log.provider_model);
      assert.equal(r.stream, c.stream);
      assert.equal(r.status, 200);
      assert.equal(r.upstream_status, 200);
      assert.equal(r.prompt_tokens, log.prompt_tokens);
      assert.equal(r.completion_tokens, log.completion_tokens);
      if (!c.stream) assert.equal(r.completion_tokens, c.body.usage.completion_tokens);
      assert.equal(r.usage_source, 'provider');
      assert.equal(r.credential, 'config');
      assert.ok(r.latency_us > 0);
      assert.ok(r.ttft_us === null || r.ttft_us >= 0);
      assert.equal(r.error, null);
    }
    assert.equal(rows.filter((r) => r.request_id === calls[6].id).length, 0, 'no row for a 401');
    assert.deepEqual(new Set(rows.map((r) => r.id)).size, rows.length, 'ids unique');
  });
});

/* ------------------------------------------------------------ 5. spool full */

describe('a full spool refuses new calls', () => {
  let gw;
  after(async () => {
    await gw?.stop();
  });

  it('503 ledger_unavailable in OpenAI shape while the backlog is over spool_max_bytes', { timeout: 60000 }, async (t) => {
    // fat rows: a model name at its limit (255), twice in every row
    // (~1.3 KB), so the 1 MiB minimum is some 800 calls: about a second
    gw = await startDbGateway(pg, {
      patch: (cfg) => {
        cfg.ledger = { spool_max_bytes: '1MiB', ship_interval: '20ms' };
        cfg.models.push({ name: 'big/*', provider: 'mock' });
      },
    });
    const model = `big/${'x'.repeat(251)}`;
    const probe = await chat(gw, KEY, { model });
    assert.equal(probe.status, 200, probe.text);
    await pg.pause();
    const served = [probe];
    const refusedIds = [];
    let refused = null;
    try {
      const worker = async () => {
        while (!refused && served.length < 5000) {
          const c = await chat(gw, KEY, { model, maxTokens: 1 });
          if (ok2xx(c)) served.push(c);
          else if (c.status === 503) refused ??= c;
          else assert.fail(`unexpected ${c.status}: ${c.text.slice(0, 300)}`);
        }
      };
      await Promise.all(Array.from({ length: 40 }, worker));
      t.diagnostic(`${served.length} calls served before the first refusal`);
      assert.ok(refused, 'a call was refused once the spool was full');
      assert.ok(served.length >= 500, `only ${served.length} calls fit in 1 MiB`);
      const e = refused.body ?? JSON.parse(refused.text);
      assert.equal(e.error.code, 'ledger_unavailable');
      assert.equal(e.error.type, 'server_error');
      assert.equal(typeof e.error.message, 'string');
      assert.ok('param' in e.error, 'OpenAI error shape');
      assert.equal(refused.headers.get('retry-after'), '5');
      // still full: a plain call is refused too, and in Anthropic's shape on /v1/messages
      const again = await chat(gw, KEY, {});
      assert.equal(again.status, 503);
      const msg = await fetch(gw.url('/v1/messages'), {
        method: 'POST',
        headers: { 'x-api-key': KEY, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'mock-1', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }] }),
      });
      // tollgate's Anthropic encoder maps 503 to Anthropic's "overloaded" (529)
      const mb = await msg.json();
      assert.equal(msg.status, 529, JSON.stringify(mb));
      assert.equal(mb.type, 'error');
      assert.equal(mb.error.type, 'overloaded_error');
      assert.match(mb.error.message, /cannot record usage/);
      refusedIds.push(refused.id, again.id);
    } finally {
      await pg.resume();
    }
    // the database back: the spool drains and calls are served again
    const until = performance.now() + 20000;
    let c;
    do {
      await sleep(200);
      c = await chat(gw, KEY, {});
    } while (c.status === 503 && performance.now() < until);
    assert.equal(c.status, 200, c.text);
    served.push(c);
    const ids = served.map((x) => x.id);
    assert.deepEqual(await waitRows(pg, ids, 20000), []);
    const counts = rowCounts(pg, ids);
    for (const id of ids) assert.equal(counts.get(id), 1, `${id}: one row`);
    for (const [id, n] of rowCounts(pg, refusedIds)) assert.equal(n, 0, `refused ${id} has no row`);
    assertLedgerConsistent(pg);
    await stopClean(gw, 'spool-full gateway');
  });
});

/* ------------------------------------------------------------ 6. SIGTERM */

describe('SIGTERM drains the ledger', () => {
  let gw;
  after(async () => {
    await gw?.stop();
  });

  it('rows of the calls made just before SIGTERM are in the database at exit 0', T, async () => {
    // ship_interval long: only the drain ships these rows
    gw = await startDbGateway(pg, { patch: (cfg) => { cfg.ledger = { ship_interval: '60s' }; } });
    const spool = path.join(gw.dir, 'tollgate-spool');
    const calls = await Promise.all(Array.from({ length: 25 }, (_, i) => chat(gw, KEY, { stream: i % 2 === 0 })));
    assert.deepEqual(calls.filter((c) => !ok2xx(c)).map((c) => c.status), []);
    const ids = calls.map((c) => c.id);
    assert.deepEqual([...rowCounts(pg, ids).values()].filter((n) => n > 0), [], 'nothing shipped before the drain');
    await stopClean(gw, 'drained gateway');
    const counts = rowCounts(pg, ids);
    for (const id of ids) assert.equal(counts.get(id), 1, `${id}: one row at exit`);
    assert.ok(/ledger drained: \d+ rows shipped, 0 bytes left/.test(gw.stderr), gw.stderr.slice(-1500));
    assert.equal(spoolLines(spool).length, 0, 'nothing left in the spool');
    assertLedgerConsistent(pg);
  });

  it('calls still in flight at SIGTERM finish, and their rows are in the database at exit 0', T, async () => {
    gw = await startDbGateway(pg, {
      patch: (cfg) => {
        cfg.ledger = { ship_interval: '60s' };
        cfg.providers.push({ name: 'slowmock', type: 'mock', mock: { latency: '400ms' } });
        cfg.models.push({ name: 'slow-1', provider: 'slowmock' });
      },
    });
    const pending = Array.from({ length: 12 }, (_, i) => chat(gw, KEY, { model: 'slow-1', stream: i % 2 === 0 }));
    await sleep(150); // all twelve are waiting on the (slow) provider
    await stopClean(gw, 'drained gateway (in flight)');
    const calls = await Promise.all(pending);
    assert.deepEqual(calls.map((c) => c.status), calls.map(() => 200), calls.map((c) => c.text.slice(0, 100)).join('\n'));
    const counts = rowCounts(pg, calls.map((c) => c.id));
    for (const c of calls) assert.equal(counts.get(c.id), 1, `${c.id}: one row at exit`);
  });

  it('with the database away: exit 0 soon, the rows stay in the spool for the next start', T, async (t) => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tg-ledger-term-'));
    const spool = path.join(root, 'spool');
    const patch = (cfg) => { cfg.ledger = { spool_dir: spool, ship_interval: '50ms' }; };
    let gw2;
    try {
      gw = await startDbGateway(pg, { patch });
      let calls;
      await pg.pause();
      try {
        calls = await Promise.all(Array.from({ length: 15 }, (_, i) => chat(gw, KEY, { stream: i % 2 === 0 })));
        assert.deepEqual(calls.filter((c) => !ok2xx(c)).map((c) => c.status), []);
        const t0 = performance.now();
        await stopClean(gw, 'drained gateway (database away)');
        const ms = performance.now() - t0;
        t.diagnostic(`exit after ${ms.toFixed(0)} ms`);
        assert.ok(ms < 8000, `SIGTERM took ${ms} ms with the database away`);
        const lines = spoolLines(spool).map((l) => JSON.parse(l));
        for (const c of calls) assert.equal(lines.filter((r) => r.request_id === c.id).length, 1, `${c.id} kept in the spool`);
      } finally {
        await pg.resume();
      }
      gw2 = await startDbGateway(pg, { patch });
      const ids = calls.map((c) => c.id);
      assert.deepEqual(await waitRows(pg, ids, 15000), []);
      await waitStable(pg, 500);
      const counts = rowCounts(pg, ids);
      for (const id of ids) assert.equal(counts.get(id), 1, `${id}: one row`);
      assertLedgerConsistent(pg);
      await stopClean(gw2, 'next start');
    } finally {
      await gw2?.stop();
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});
