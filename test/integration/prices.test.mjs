// prices.test.mjs - the price catalog edited through the admin API
// (migration 0007, /admin/prices) and markups as customer prices:
//   1. an unpriced model gets a cost once an admin sets its price, on
//      every instance (NOTIFY), changes with an update and goes with a
//      delete; the ledger and x-tollgate-cost-usd agree;
//   2. a database alias with markup_bps and a config alias with
//      `markup: 20%` charge the cost plus the markup;
//   3. validation: a bad provider name, a duplicate, a viewer writing.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { newRequestId, sleep } from './lib/gateway.mjs';
import { startMigratedPg, startDbGateway, adminClient, makeTenant, usd } from './lib/tenancy.mjs';

const T = { timeout: 60000 };

describe('prices through the admin API, and markups', () => {
  let pg;
  let a;
  let b;
  let admin;
  let tenant;
  const q = (sql, p) => pg.query(sql, p).trim();

  before(async () => {
    pg = await startMigratedPg();
    const patch = (c) => {
      c.models.push({ name: 'marked', provider: 'mock', model: 'mock-1', markup: '20%' });
      c.ledger = { ship_interval: '20ms' };
    };
    a = await startDbGateway(pg, { patch });
    b = await startDbGateway(pg, { patch });
    admin = adminClient(a);
    tenant = await makeTenant(admin, 'prices');
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    pg?.stop();
  });

  /** One whole call; {cost, price} from its ledger row, and the header. */
  async function priced(gw, model) {
    const id = newRequestId('price');
    const r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${tenant.secret}`, 'content-type': 'application/json', 'x-request-id': id },
      body: JSON.stringify({ model, max_tokens: 16, messages: [{ role: 'user', content: 'Hi' }] }),
    });
    const text = await r.text();
    assert.equal(r.status, 200, text);
    const until = performance.now() + 10000;
    for (;;) {
      const row = q("SELECT coalesce(cost_nano, -1), coalesce(price_nano, -1), prompt_tokens, completion_tokens FROM calls WHERE request_id = :'p1'", [id]);
      if (row) {
        const [cost, price, pt, ct] = row.split('|').map(Number);
        return { cost, price, pt, ct, header: r.headers.get('x-tollgate-cost-usd') };
      }
      if (performance.now() > until) throw new Error('the call is not in the ledger');
      await sleep(25);
    }
  }

  /** Waits until gw prices mock-1 at `want` nano per prompt token (or unpriced: -1). */
  async function seen(gw, inputPerToken) {
    const until = performance.now() + 5000;
    let got;
    for (;;) {
      got = await priced(gw, 'mock-1');
      const want = inputPerToken < 0 ? -1 : got.pt * inputPerToken + got.ct * inputPerToken * 2;
      if (got.cost === want) return got;
      if (performance.now() > until) throw new Error(`cost ${got.cost}, want ${want}`);
      await sleep(50);
    }
  }

  it('a price set, changed and deleted through the API reaches every instance', T, async () => {
    // the mock has no catalog entry: unpriced
    let r = await priced(a, 'mock-1');
    assert.equal(r.cost, -1);
    assert.equal(r.header, null);

    // $1 / $2 per 1M tokens: 1000 / 2000 nano per token
    const p = await admin.create('prices', { provider: 'mock', model: 'mock-1', input: '1.00', output: '2.00' });
    assert.equal(p.input, '1.00');
    assert.equal(p.output, '2.00');
    assert.equal(p.cached_input, null);
    assert.equal(p.created_by, 'master');
    for (const gw of [a, b]) {
      r = await seen(gw, 1000);
      assert.ok(r.cost > 0);
      assert.equal(r.price, r.cost, 'no alias price: the customer pays the cost');
      assert.equal(r.header, usd(r.price));
    }
    // audited
    assert.equal(q("SELECT count(*) FROM audit_log WHERE entity = 'price_overrides' AND action = 'create'"), '1');

    await admin.update('prices', p.id, { input: '3.00', output: '6.00' });
    for (const gw of [a, b]) await seen(gw, 3000);

    await admin.remove('prices', p.id);
    for (const gw of [a, b]) await seen(gw, -1);
  });

  it('markups: a database alias\'s markup_bps and a config alias\'s markup', T, async () => {
    await admin.create('prices', { provider: 'mock', model: 'mock-1', input: '1.00', output: '2.00' });
    await seen(a, 1000);
    const al = await admin.create('model-aliases', { name: 'mock-plus', routes: [{ provider: 'mock', model: 'mock-1' }], markup_bps: 2500 });
    assert.equal(al.markup_bps, 2500);
    const until = performance.now() + 5000;
    let r;
    for (;;) {
      const probe = await fetch(a.url('/v1/models'), { headers: { authorization: `Bearer ${tenant.secret}` } });
      const names = (await probe.json()).data.map((m) => m.id);
      if (names.includes('mock-plus')) break;
      if (performance.now() > until) throw new Error('the alias did not arrive');
      await sleep(50);
    }
    r = await priced(a, 'mock-plus');
    assert.ok(r.cost > 0);
    assert.equal(r.price, Math.round(r.cost * 1.25));
    r = await priced(b, 'marked');
    assert.equal(r.price, Math.round(r.cost * 1.2));
    assert.equal(r.header, usd(r.price));
    // an explicit price and a markup together are refused
    const both = await admin.call('POST', 'model-aliases', { name: 'x', routes: [{ provider: 'mock', model: 'mock-1' }], markup_bps: 10, price_input: '1', price_output: '1' });
    assert.equal(both.status, 400, both.text);
  });

  it('validation: provider names, duplicates, roles', T, async () => {
    let r = await admin.call('POST', 'prices', { provider: 'Open AI', model: 'm', input: '1', output: '1' });
    assert.equal(r.status, 400, r.text);
    r = await admin.call('POST', 'prices', { provider: 'openai', model: 'gpt-4o', input: '1' });
    assert.equal(r.status, 400, r.text);
    assert.match(r.body.error.message, /output/);
    await admin.create('prices', { provider: 'openai', model: 'gpt-4o', input: '2.00', output: '8.00' });
    r = await admin.call('POST', 'prices', { provider: 'openai', model: 'gpt-4o', input: '1', output: '1' });
    assert.equal(r.status, 409, r.text);
    const viewer = await admin.create('admin-keys', { name: 'price-viewer', role: 'viewer' });
    const v = adminClient(a, viewer.key);
    r = await v.call('POST', 'prices', { provider: 'openai', model: 'o3', input: '1', output: '1' });
    assert.equal(r.status, 403, r.text);
    const list = await v.list('prices');
    assert.ok(list.data.some((x) => x.provider === 'openai' && x.model === 'gpt-4o' && x.input === '2.00'));
  });

  it('no sanitizer reports', () => {
    assert.deepEqual(a.sanitizerReports(), []);
    assert.deepEqual(b.sanitizerReports(), []);
  });
});
