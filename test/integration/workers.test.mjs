// workers.test.mjs - workers: N runs N loops in N threads behind one port
// (SO_REUSEPORT), and the process still behaves as one gateway:
//   1. DB-less, workers: 2: connections land on both loops
//      (tollgate_worker_client_connections); a config key's rpm and budget
//      hold across the loops (shared buckets and budgets, not one each);
//      /metrics sums the loops (valid under promtool, the counters equal the
//      calls made); /health/ready answers for both; SIGHUP reaches both (a
//      new key works on every connection); SIGTERM drains both, exit 0, and
//      the spool holds exactly one row per call served;
//   2. with PostgreSQL, workers: 2: each loop leases as its own instance
//      ("<id>" and "<id>/w1"), a key budget is never overspent across them,
//      every lease goes back on SIGTERM and every call is in the ledger once;
//   3. the default (no workers setting) runs one loop per core.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { baseConfig, startGateway, sleep, KEY, LIMITED_KEY, newRequestId, postText } from './lib/gateway.mjs';
import { startMigratedPg, dbConfig, waitReady, adminClient, makeTenant } from './lib/tenancy.mjs';

const T = { timeout: 60000 };
const NEW_KEY = 'tg-test-key-added-by-reload-000001';
const BODY = JSON.stringify({ model: 'priced', max_tokens: 16, messages: [{ role: 'user', content: 'Hi' }] });

/** One call on a fresh connection: {status, text}. */
function call(gw, key = KEY, { model = 'priced' } = {}) {
  const body = model === 'priced' ? BODY : BODY.replace('"priced"', JSON.stringify(model));
  return postText(gw, '/v1/chat/completions', {
    authorization: `Bearer ${key}`, 'content-type': 'application/json', 'x-request-id': newRequestId('wk'),
  }, body);
}

async function metrics(gw) {
  const r = await fetch(gw.url('/metrics'));
  assert.equal(r.status, 200);
  return r.text();
}

/** The value of one series (exact line prefix "name{labels}" or "name"), or undefined. */
function sample(text, series) {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

const counts = (rs) => rs.reduce((m, r) => ({ ...m, [r.status]: (m[r.status] ?? 0) + 1 }), {});

describe('workers: 2 without a database', () => {
  let gw;
  let spool;
  let cfg;
  before(async () => {
    spool = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-workers-'));
    cfg = baseConfig('https://127.0.0.1:9/v1', (c) => {
      c.workers = 2;
      c.models.push({ name: 'priced', provider: 'mock', price: { input: '1.00', output: '2.00' } });
      // 40,000 nano a call: 25 calls; rpm 40 (a burst of 40)
      c.keys[0].max_budget = '0.001';
      c.keys[0].budget_duration = '1d';
      c.keys[1].rpm = 40;
      c.ledger = { spool_dir: spool };
    });
    gw = await startGateway(cfg);
  });
  after(async () => {
    await gw?.stop().catch(() => {});
    fs.rmSync(spool, { recursive: true, force: true });
  });

  it('two loops on one port, both taking connections', T, async () => {
    await gw.waitForStderr(/2 workers \(loops, one thread each\) on port \d+/, 5000);
    const threads = fs.readdirSync(`/proc/${gw.pid}/task`).length;
    assert.ok(threads >= 2, `${threads} threads`);
    // 32 connections held open: the kernel spreads them over both listeners
    const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
    try {
      await Promise.all(Array.from({ length: 32 }, () => new Promise((resolve, reject) => {
        http.get({ host: '127.0.0.1', port: gw.port, path: '/health', agent }, (res) => {
          res.resume();
          res.on('end', resolve);
        }).on('error', reject);
      })));
      const text = await metrics(gw);
      const w0 = sample(text, 'tollgate_worker_client_connections{worker="0"}');
      const w1 = sample(text, 'tollgate_worker_client_connections{worker="1"}');
      assert.ok(w0 > 0 && w1 > 0, `connections by worker: ${w0}, ${w1}`);
      assert.equal(sample(text, 'tollgate_client_connections'), w0 + w1);
    } finally {
      agent.destroy();
    }
    const ready = await fetch(gw.url('/health/ready'));
    assert.equal(ready.status, 200, await ready.text());
  });

  it('a config key\'s rpm and budget hold across the loops', T, async () => {
    // 60 calls at once on fresh connections against rpm 40: 40 admitted, not 80
    const limited = await Promise.all(Array.from({ length: 60 }, () => call(gw, LIMITED_KEY, { model: 'mock-1' })));
    const lc = counts(limited);
    assert.equal(lc[200], 40, JSON.stringify(lc));
    assert.equal(lc[429], 20, JSON.stringify(lc));
    // 40 calls against a budget for 25: 25 admitted, not 50
    const rs = await Promise.all(Array.from({ length: 40 }, () => call(gw)));
    const c = counts(rs);
    assert.equal(c[200], 25, JSON.stringify(c));
    assert.equal(c[402], 15, JSON.stringify(c));
    const text = await metrics(gw);
    const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    assert.equal(r.status, 0, `promtool: ${r.stdout}${r.stderr}`);
    // the process's counts: the sum of both loops'
    assert.equal(sample(text, 'tollgate_requests_total{alias="priced",provider="mock",route="mock/priced",status="200"}'), 25);
    assert.equal(sample(text, 'tollgate_requests_total{alias="mock-1",provider="mock",route="mock/mock-1",status="200"}'), 40);
    assert.equal(sample(text, 'tollgate_refusals_total{reason="rate_limit"}'), 20);
    assert.equal(sample(text, 'tollgate_refusals_total{reason="budget"}'), 15);
    assert.equal(sample(text, 'tollgate_price_usd_total{alias="priced",provider="mock",route="mock/priced"}'), 0.001);
    assert.equal((text.match(/^# TYPE tollgate_requests_total /gm) ?? []).length, 1);
    assert.equal(sample(text, 'tollgate_build_info{version="0.1.0"}') ?? 1, 1);
  });

  it('SIGHUP reloads every loop; SIGTERM drains both, one spool row per call served', T, async () => {
    cfg.keys.push({ key: NEW_KEY, alias: 'added', models: ['mock-1'] });
    gw.writeConfig(cfg);
    const mark = gw.stderrLines.length;
    gw.signal('SIGHUP');
    await gw.waitForStderr(/reloaded/, 5000, mark);
    await sleep(200); // the other loop applies it from its wake handle
    const rs = await Promise.all(Array.from({ length: 24 }, () => call(gw, NEW_KEY, { model: 'mock-1' })));
    assert.deepEqual(counts(rs), { 200: 24 });
    const exit = await gw.stop(15000);
    assert.deepEqual(exit, { code: 0, signal: null }, gw.stderrLines.slice(-20).join('\n'));
    assert.deepEqual(gw.sanitizerReports(), []);
    const rows = fs.readdirSync(spool).filter((f) => f.endsWith('.jsonl'))
      .flatMap((f) => fs.readFileSync(path.join(spool, f), 'utf8').split('\n').filter(Boolean))
      .map((l) => JSON.parse(l));
    const ok = rows.filter((r) => r.status === 200);
    assert.equal(ok.length, 25 + 40 + 24, `${ok.length} rows of 200 calls in the spool`);
    assert.equal(new Set(rows.map((r) => r.id)).size, rows.length, 'no row twice');
  });
});

describe('workers: 2 with PostgreSQL', () => {
  let pg;
  let gw;
  before(async () => {
    pg = await startMigratedPg();
  });
  after(async () => {
    await gw?.stop().catch(() => {});
    pg?.stop();
  });

  it('each loop leases as its own instance; a key budget holds across them; leases back on SIGTERM', T, async () => {
    gw = await startGateway(dbConfig(pg, {
      patch: (c) => {
        c.workers = 2;
        c.instance_id = 'wk';
        c.ledger = { ship_interval: '20ms' };
        c.models.find((m) => m.name === 'mock-1').price = { input: '1.00', output: '2.00' };
      },
    }));
    await waitReady(gw, 15000);
    const admin = adminClient(gw);
    // a budget for 50 calls of 40,000 nano
    const ten = await makeTenant(admin, 'wk', { max_budget: '0.002', budget_duration: '1d' });
    await sleep(300); // both loops' key caches see the key
    // 20 calls (the budget covers them): both loops lease
    const first = await Promise.all(Array.from({ length: 20 }, () => call(gw, ten.secret, { model: 'mock-1' })));
    assert.deepEqual(counts(first), { 200: 20 });
    const instances = pg.query("SELECT string_agg(DISTINCT instance, ',' ORDER BY instance) FROM budget_leases WHERE scope = 'key'").trim();
    assert.equal(instances, 'wk,wk/w1', 'both loops hold a lease of the budget');
    // 120 more: refused once the budget minus the other loop's lease cannot cover a call
    const rs = [...first, ...await Promise.all(Array.from({ length: 120 }, () => call(gw, ten.secret, { model: 'mock-1' })))];
    const c = counts(rs);
    assert.deepEqual(Object.keys(c).sort(), ['200', '402'], JSON.stringify(c));
    const exit = await gw.stop(15000);
    assert.deepEqual(exit, { code: 0, signal: null }, gw.stderrLines.slice(-20).join('\n'));
    assert.deepEqual(gw.sanitizerReports(), []);
    assert.equal(pg.query('SELECT count(*) FROM budget_leases').trim(), '0', 'every lease returned');
    const [n, sum] = pg.query(`SELECT count(*), coalesce(sum(price_nano), 0) FROM calls WHERE key_id = '${ten.key.id}' AND status = 200`)
      .trim().split('|').map(Number);
    assert.equal(n, c[200], 'every call served is in the ledger once');
    assert.ok(sum <= 2000000, `spent ${sum} of 2,000,000`);
    assert.ok(2000000 - sum < 4 * 40000 * 2, `${2000000 - sum} left unused after ${n} calls`);
    const spent = Number(pg.query(`SELECT spent_nano FROM budgets WHERE scope = 'key' AND scope_id = '${ten.key.id}'`).trim());
    assert.equal(spent, sum, 'what the loops reported equals what the ledger charged');
  });
});

describe('workers default', () => {
  it('one loop per core when the config does not say', T, async () => {
    const cfg = `listen: "127.0.0.1:0"\nproviders:\n  - name: mock\n    type: mock\nmodels:\n  - name: mock-1\n    provider: mock\nkeys:\n  - key: ${KEY}\n    alias: test\n`;
    const gw = await startGateway(cfg);
    try {
      const cores = os.availableParallelism ? os.availableParallelism() : os.cpus().length;
      if (cores > 1) {
        await gw.waitForStderr(new RegExp(`${cores} workers \\(loops, one thread each\\)`), 5000);
      }
      const r = await call(gw, KEY, { model: 'mock-1' });
      assert.equal(r.status, 200, r.text);
    } finally {
      const exit = await gw.stop(15000);
      assert.deepEqual(exit, { code: 0, signal: null });
    }
  });
});
