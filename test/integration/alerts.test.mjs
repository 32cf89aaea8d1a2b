// alerts.test.mjs - a budget's soft threshold: one signed webhook and one
// log line per period, whichever of two instances sees it first.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { newRequestId, sleep } from './lib/gateway.mjs';
import { startMigratedPg, startDbGateway, adminClient } from './lib/tenancy.mjs';

const T = { timeout: 60000 };
const SECRET = 'alert-secret-0123456789';

describe('budget soft threshold alerts', () => {
  let pg;
  let a;
  let b;
  let admin;
  let hook;
  const got = [];
  before(async () => {
    hook = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d) => { body += d; });
      req.on('end', () => {
        got.push({ headers: req.headers, body, path: req.url });
        res.writeHead(204).end();
      });
    });
    await new Promise((r) => hook.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${hook.address().port}/hooks/tollgate`;
    pg = await startMigratedPg();
    const patch = (c) => {
      c.models.push({ name: 'priced', provider: 'mock', price: { input: '1.00', output: '2.00' } });
      c.budgets = { soft_threshold: 50, alert_webhook: url, alert_webhook_secret: SECRET, lease_ttl: '5s' };
    };
    [a, b] = await Promise.all([startDbGateway(pg, { patch }), startDbGateway(pg, { patch })]);
    admin = adminClient(a);
  });
  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    pg?.stop();
    hook?.close();
  });

  async function call(gw, key) {
    const r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'x-request-id': newRequestId('alert') },
      body: JSON.stringify({ model: 'priced', max_tokens: 16, messages: [{ role: 'user', content: 'Hi' }] }),
    });
    await r.text();
    return r.status;
  }

  it('passing 50% of a team budget posts one signed alert, once, from either instance', T, async () => {
    const org = await admin.create('organizations', { name: 'alerts' });
    // each call's worst case is about 40,000 nano: a 0.001 USD budget is ~25 calls
    const team = await admin.create('teams', { org_id: org.id, name: 'a', max_budget: '0.001', budget_duration: '1h', credit_limit: null });
    const key = (await admin.create('keys', { team_id: team.id, alias: 'k' })).key;
    const statuses = [];
    for (let i = 0; i < 20; i++) statuses.push(await call(i % 2 ? b : a, key));
    assert.ok(statuses.filter((s) => s === 200).length >= 15, `statuses ${statuses}`);
    // spend is reported at renewals: wait for the alert (bounded)
    for (let i = 0; i < 100 && got.length === 0; i++) await sleep(100);
    await sleep(1500); // a duplicate would come now
    const alerts = got.filter((g) => JSON.parse(g.body).id === team.id);
    assert.equal(alerts.length, 1, `alerts: ${JSON.stringify(got.map((g) => g.body))}`);
    const al = alerts[0];
    assert.equal(al.path, '/hooks/tollgate');
    assert.equal(al.headers['x-tollgate-event'], 'budget.soft_threshold');
    const mac = crypto.createHmac('sha256', SECRET).update(al.body).digest('hex');
    assert.equal(al.headers['x-tollgate-signature'], `sha256=${mac}`);
    const body = JSON.parse(al.body);
    assert.equal(body.event, 'budget.soft_threshold');
    assert.equal(body.scope, 'team');
    assert.equal(body.threshold_pct, 50);
    assert.equal(body.max, '0.001');
    assert.ok(Number(body.spent) >= 0.0005, `spent ${body.spent}`);
    assert.match(body.reset_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    // one log line, on the instance that reported it
    const lines = [...a.stderrLines, ...b.stderrLines].filter((l) => l.includes(`budget team ${team.id} passed 50%`));
    assert.equal(lines.length, 1, lines.join('\n'));
    assert.equal(pg.query("SELECT soft_fired_for = period_start FROM budgets WHERE scope = 'team' AND scope_id = :'p1'", [team.id]).trim(), 't');
  });

  it('no sanitizer reports', T, () => {
    assert.deepEqual(a.sanitizerReports(), []);
    assert.deepEqual(b.sanitizerReports(), []);
  });
});
