// Metrics and logs (issue 8):
//   1. GET /metrics after a mix of calls: valid under `promtool check
//      metrics`, the request/token/money/refusal/state families with the
//      values the calls imply, no client-sent string as a label;
//   2. a real Prometheus (Debian package) scrapes tollgate and a counter
//      is queried back through its HTTP API;
//   3. per-key labels only when metrics.key_labels is on;
//   4. the access log to a file, moved away and reopened on SIGUSR1; the
//      operational log to stdout by default and to a file after a reload;
//      a log path that cannot be opened stops the start with a clear error.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { startGateway, runTollgate, toYaml, baseConfig, sleep, KEY, newRequestId } from './lib/gateway.mjs';
import { startMigratedPg, dbConfig, waitReady, adminClient, makeTenant } from './lib/tenancy.mjs';
import { freePort } from './lib/nginx.mjs';

const T = { timeout: 60000 };

async function chat(gw, key, { model = 'mock-1', stream = false, id = newRequestId('obs') } = {}) {
  const r = await fetch(gw.url('/v1/chat/completions'), {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'x-request-id': id },
    body: JSON.stringify({ model, max_tokens: 16, stream, messages: [{ role: 'user', content: 'Hello there' }] }),
  });
  return { status: r.status, text: await r.text(), id };
}

const scrape = async (gw) => {
  const r = await fetch(gw.url('/metrics'));
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  return r.text();
};

/** The value of the sample `name{labels}` (exact label text), or undefined. */
function sample(text, series) {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

function promtool(text) {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  assert.equal(r.error, undefined, `promtool: ${r.error}`);
  return r;
}

describe('metrics', () => {
  let pg;
  let gw;
  let ten;
  let prom;
  let promDir;
  before(async () => {
    pg = await startMigratedPg();
    gw = await startGateway(dbConfig(pg, {
      patch: (cfg) => {
        cfg.models.find((m) => m.name === 'mock-1').price = { input: '1.00', output: '2.00' };
        cfg.ledger = { ship_interval: '50ms' };
      },
    }));
    await waitReady(gw);
    const admin = adminClient(gw);
    ten = await makeTenant(admin, 'obs', { max_budget: '1', budget_duration: '1d' });
    await sleep(200);
  });
  after(async () => {
    if (prom && prom.exitCode === null) {
      prom.kill('SIGTERM');
      await new Promise((r) => prom.once('exit', r));
    }
    if (promDir) fs.rmSync(promDir, { recursive: true, force: true });
    await gw?.stop();
    pg?.stop();
  });

  it('counts calls, tokens, money, refusals and state; promtool-valid; no client strings as labels', T, async () => {
    for (let i = 0; i < 3; i++) assert.equal((await chat(gw, ten.secret)).status, 200);
    for (let i = 0; i < 2; i++) {
      const r = await chat(gw, ten.secret, { stream: true });
      assert.equal(r.status, 200);
      assert.match(r.text, /data: \[DONE\]/);
    }
    const odd = `no-such-model-${Date.now()}"\\x`;
    assert.equal((await chat(gw, ten.secret, { model: odd })).status, 404);
    assert.equal((await chat(gw, 'sk-wrong-key-0123456789')).status, 401);
    // a config key too: a second alias of labels
    assert.equal((await chat(gw, KEY)).status, 200);
    // the ledger ships the rows (counted in the metrics once acknowledged)
    const until = Date.now() + 10000;
    let text;
    for (;;) {
      text = await scrape(gw);
      if (sample(text, 'tollgate_ledger_rows_total{stage="shipped"}') >= 6 || Date.now() > until) break;
      await sleep(100);
    }
    const pt = promtool(text);
    assert.equal(pt.status, 0, `promtool check metrics:\n${pt.stdout}${pt.stderr}`);

    const m = 'alias="mock-1",provider="mock",route="mock/mock-1"';
    assert.equal(sample(text, `tollgate_requests_total{${m},status="200"}`), 6);
    assert.equal(sample(text, 'tollgate_requests_total{alias="",provider="",route="",status="401"}'), 1);
    assert.equal(sample(text, 'tollgate_requests_total{alias="",provider="",route="",status="404"}'), 1);
    assert.ok(!text.includes('no-such-model'), 'the client\'s model name is no label');
    assert.equal(sample(text, `tollgate_request_duration_seconds_count{${m}}`), 6);
    assert.equal(sample(text, `tollgate_request_duration_seconds_bucket{${m},le="+Inf"}`), 6);
    assert.equal(sample(text, `tollgate_time_to_first_token_seconds_count{${m}}`), 6);
    assert.equal(sample(text, `tollgate_upstream_duration_seconds_count{${m}}`), 6);
    assert.equal(sample(text, 'tollgate_gateway_overhead_seconds_count'), 6);
    const out = sample(text, `tollgate_tokens_total{${m},kind="output"}`);
    const inp = sample(text, `tollgate_tokens_total{${m},kind="input"}`);
    assert.ok(out >= 6 && inp >= 6, `tokens: in ${inp}, out ${out}`);
    // the price is exact: 1000 nano per input token, 2000 per output token
    const price = sample(text, `tollgate_price_usd_total{${m}}`);
    assert.ok(Math.abs(price - (inp * 1000 + out * 2000) / 1e9) < 1e-12, `price ${price} for ${inp}/${out} tokens`);
    assert.equal(sample(text, 'tollgate_refusals_total{reason="auth"}'), 1);
    assert.equal(sample(text, 'tollgate_streams_active'), 0);
    assert.equal(sample(text, 'tollgate_requests_in_flight'), 0);
    assert.ok(sample(text, 'tollgate_client_connections') >= 1);
    assert.ok(sample(text, 'tollgate_db_connections{state="idle"}') >= 1);
    assert.equal(sample(text, 'tollgate_db_listening'), 1);
    assert.ok(sample(text, 'tollgate_db_queries_total{outcome="ok"}') > 0);
    assert.ok(sample(text, 'tollgate_lease_budgets') >= 1);
    assert.ok(sample(text, 'tollgate_lease_renewals_total{outcome="ok"}') >= 1);
    assert.equal(sample(text, 'tollgate_ledger_rows_total{stage="shipped"}'), 6);
    assert.equal(sample(text, 'tollgate_ledger_accepting'), 1);
    assert.equal(sample(text, `tollgate_build_info{version="${text.match(/tollgate_build_info\{version="([^"]+)"\}/)[1]}"}`), 1);
    assert.ok(text.includes('tollgate_route_attempts_total{alias="mock-1"'), 'route metrics still there');
    assert.ok(!/tollgate_key_/.test(text), 'no per-key series unless asked for');

    // a spent budget is a refusal, counted
    const admin = adminClient(gw);
    const poor = await makeTenant(admin, 'poor', { max_budget: '0.00001', budget_duration: '1d' });
    await sleep(200);
    let last;
    for (let i = 0; i < 10; i++) {
      last = await chat(gw, poor.secret);
      if (last.status !== 200) break;
    }
    assert.equal(last.status, 402, last.text);
    const after = await scrape(gw);
    assert.ok(sample(after, 'tollgate_refusals_total{reason="budget"}') >= 1);
  });

  it('a real Prometheus scrapes tollgate; the counter comes back through its query API', T, async () => {
    promDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-prom-'));
    const port = await freePort();
    fs.writeFileSync(path.join(promDir, 'prometheus.yml'), toYaml({
      global: { scrape_interval: '1s', evaluation_interval: '1s' },
      scrape_configs: [{ job_name: 'tollgate', static_configs: [{ targets: [`127.0.0.1:${gw.port}`] }] }],
    }));
    const stderr = [];
    prom = spawn('prometheus', [
      `--config.file=${path.join(promDir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(promDir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    prom.stderr.on('data', (d) => stderr.push(String(d)));
    const query = async (q) => {
      const r = await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(q)}`);
      const body = await r.json();
      assert.equal(body.status, 'success', JSON.stringify(body));
      return body.data.result;
    };
    const want = sample(await scrape(gw), 'tollgate_requests_total{alias="mock-1",provider="mock",route="mock/mock-1",status="200"}');
    assert.ok(want >= 6);
    const until = Date.now() + 40000;
    let got;
    let up;
    for (;;) {
      try {
        got = await query('sum(tollgate_requests_total{alias="mock-1",status="200"})');
        // asked after the counter: asked before, it could predate the scrape that brought it
        up = await query('up{job="tollgate"}');
        if (got.length && Number(got[0].value[1]) === want && up.length) break;
      } catch (e) {
        got = String(e);
      }
      assert.equal(prom.exitCode, null, `prometheus exited: ${stderr.join('')}`);
      if (Date.now() > until) assert.fail(`prometheus never saw ${want}: ${JSON.stringify(got)}; stderr: ${stderr.join('')}`);
      await sleep(250);
    }
    assert.equal(Number(up[0].value[1]), 1, 'the scrape target is up');
    // a histogram too: the quantile query works on tollgate's buckets
    const q = await query('histogram_quantile(0.99, sum by (le) (tollgate_request_duration_seconds_bucket{alias="mock-1"}))');
    assert.ok(q.length === 1 && Number(q[0].value[1]) > 0, JSON.stringify(q));
  });
});

describe('metrics.key_labels', () => {
  it('per-key and team series only when switched on', T, async () => {
    const gw = await startGateway(baseConfig('https://127.0.0.1:9', (cfg) => {
      cfg.metrics = { key_labels: true };
    }));
    try {
      assert.equal((await chat(gw, KEY)).status, 200);
      assert.equal((await chat(gw, KEY, { stream: true })).status, 200);
      const text = await scrape(gw);
      assert.equal(promtool(text).status, 0);
      assert.equal(sample(text, 'tollgate_key_requests_total{key="test",team=""}'), 2);
      assert.ok(sample(text, 'tollgate_key_tokens_total{key="test",team="",kind="output"}') > 0);
    } finally {
      await gw.stop();
    }
  });
});

describe('logs', () => {
  let dir;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-logs-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const lines = (file) => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : []);
  const ids = (file) => lines(file).map((l) => JSON.parse(l).request_id);
  async function until(pred, what, ms = 5000) {
    const end = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
      await sleep(25);
    }
  }

  it('access log to a file, reopened on SIGUSR1; operational lines to stdout, then to a file after a reload', T, async () => {
    const access = path.join(dir, 'access.log');
    const ops = path.join(dir, 'tollgate.log');
    const cfg = baseConfig('https://127.0.0.1:9', (c) => {
      c.log = { access_file: access };
    });
    const gw = await startGateway(cfg);
    try {
      // operational lines come on stdout by default
      assert.ok(gw.stdoutOpLines.some((l) => /listening on/.test(l)), gw.stdoutOpLines.join('\n'));
      const a = await chat(gw, KEY);
      await until(() => ids(access).includes(a.id), 'call A in access.log');
      assert.equal(gw.accessLog.length, 0, 'no access line on stdout');
      // a rotation: the file is moved; lines still go to it until SIGUSR1
      fs.renameSync(access, `${access}.1`);
      const b = await chat(gw, KEY);
      await until(() => ids(`${access}.1`).includes(b.id), 'call B in the moved file');
      const from = gw.stderrLines.length;
      gw.signal('SIGUSR1');
      await gw.waitForStderr(/SIGUSR1: log files reopened/, 5000, from);
      const c = await chat(gw, KEY);
      await until(() => ids(access).includes(c.id), 'call C in the new access.log');
      assert.deepEqual(ids(`${access}.1`), [a.id, b.id]);
      assert.deepEqual(ids(access), [c.id]);

      // the operational log to a file, by a reload
      cfg.log.file = ops;
      gw.writeConfig(cfg);
      gw.signal('SIGHUP');
      await until(() => lines(ops).some((l) => / info  reloaded /.test(l)), 'the reload line in tollgate.log');
      const before = gw.stdoutOpLines.length;
      fs.renameSync(ops, `${ops}.1`);
      gw.signal('SIGUSR1');
      await until(() => lines(ops).some((l) => /SIGUSR1: log files reopened/.test(l)), 'the reopen line in the new tollgate.log');
      assert.equal(gw.stdoutOpLines.length, before, 'no operational line on stdout after the reload');
      assert.ok(lines(`${ops}.1`).every((l) => !/reopened/.test(l)));
      // a path that cannot be opened on reload: kept on the current file
      cfg.log.file = path.join(dir, 'no-such-dir', 'x.log');
      gw.writeConfig(cfg);
      gw.signal('SIGHUP');
      await until(() => lines(ops).some((l) => /cannot open the log file, keeping the current one: .*no-such-dir.*No such file/.test(l)), 'the refusal in tollgate.log');
    } finally {
      assert.deepEqual(await gw.stop(), { code: 0, signal: null });
    }
    assert.deepEqual(gw.sanitizerReports(), []);
    assert.deepEqual(gw.stdoutGarbage, []);
  });

  it('a log file that cannot be opened stops the start with a clear error', T, async () => {
    const cfgPath = path.join(dir, 'bad.yaml');
    fs.writeFileSync(cfgPath, toYaml(baseConfig('https://127.0.0.1:9', (c) => {
      c.log = { access_file: path.join(dir, 'missing', 'access.log') };
    })));
    const r = await runTollgate(['--config', cfgPath]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tollgate: log: .*missing\/access\.log: No such file or directory$/m);
  });
});
