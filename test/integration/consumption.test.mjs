// consumption.test.mjs - teams in a consumption mode pay every call from
// their credits, once per call, in the ledger's own statement.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { newRequestId, sleep } from './lib/gateway.mjs';
import { startMigratedPg, startDbGateway, adminClient } from './lib/tenancy.mjs';

const T = { timeout: 60000 };

describe('credits charged per call in the consumption modes', () => {
  let pg;
  let gw;
  let admin;
  before(async () => {
    pg = await startMigratedPg();
    gw = await startDbGateway(pg, {
      patch: (c) => {
        c.models.push({ name: 'priced', provider: 'mock', price: { input: '1.00', output: '2.00' } });
        c.ledger = { ship_interval: '20ms' };
      },
    });
    admin = adminClient(gw);
  });
  after(async () => {
    await gw?.stop();
    pg?.stop();
  });

  async function call(key, { byok = false } = {}) {
    const r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'x-request-id': newRequestId('cons') },
      body: JSON.stringify({ model: 'priced', messages: [{ role: 'user', content: 'Hi' }] }),
    });
    assert.equal(r.status, 200, await r.text());
    void byok;
  }

  /** Waits until the team's n calls are in the ledger. */
  async function shipped(teamId, n) {
    for (let i = 0; i < 200; i++) {
      if (Number(pg.query("SELECT count(*) FROM calls WHERE team_id = :'p1'", [teamId]).trim()) >= n) return;
      await sleep(25);
    }
    throw new Error('the ledger did not ship');
  }

  const q = (sql, p) => pg.query(sql, p).trim();

  it('consumption_usd: the balance drops by the calls\' price; tokens: by tokens / tokens_per_credit', T, async () => {
    const org = await admin.create('organizations', { name: 'cons' });
    const usd = await admin.create('teams', { org_id: org.id, name: 'usd', budget_mode: 'consumption_usd' });
    const tok = await admin.create('teams', { org_id: org.id, name: 'tok', budget_mode: 'consumption_tokens', tokens_per_credit: 1000 });
    const job = await admin.create('teams', { org_id: org.id, name: 'job', budget_mode: 'job_based' });
    const keys = {};
    for (const t of [usd, tok, job]) keys[t.id] = (await admin.create('keys', { team_id: t.id, alias: 'k' })).key;
    for (const t of [usd, tok, job]) {
      await admin.call('POST', `teams/${t.id}/credits`, { kind: 'topup', amount: '10.00' });
      for (let i = 0; i < 4; i++) await call(keys[t.id]);
      await shipped(t.id, 4);
    }
    // usd: exactly the sum of the prices
    const price = Number(q("SELECT sum(price_nano) FROM calls WHERE team_id = :'p1'", [usd.id]));
    assert.ok(price > 0);
    assert.equal(Number(q("SELECT credit_balance_nano FROM teams WHERE id = :'p1'", [usd.id])), 10e9 - price);
    // tokens: ceil(tokens * 1e9 / 1000) per batch; with one batch per call at most 1 nano over
    const tokens = Number(q("SELECT sum(prompt_tokens + completion_tokens) FROM calls WHERE team_id = :'p1'", [tok.id]));
    const charged = 10e9 - Number(q("SELECT credit_balance_nano FROM teams WHERE id = :'p1'", [tok.id]));
    assert.equal(charged, tokens * 1e6);
    // job_based: calls charge nothing
    assert.equal(Number(q("SELECT credit_balance_nano FROM teams WHERE id = :'p1'", [job.id])), 10e9);
    // the balance is the sum of the transactions, for every team
    for (const t of [usd, tok, job]) {
      assert.equal(q("SELECT credit_balance_nano = (SELECT coalesce(sum(amount_nano), 0) FROM credit_transactions WHERE team_id = :'p1') FROM teams WHERE id = :'p1'", [t.id]), 't');
    }
    // usage rows name themselves
    assert.match(q("SELECT string_agg(DISTINCT actor || '/' || kind, ',') FROM credit_transactions WHERE team_id = :'p1' AND kind = 'usage'", [usd.id]), /gateway\/usage/);
  });

  it('BYOK calls are recorded but never charged', T, async () => {
    const org = await admin.create('organizations', { name: 'cons-byok' });
    const team = await admin.create('teams', { org_id: org.id, name: 'usd', budget_mode: 'consumption_usd' });
    const key = await admin.create('keys', { team_id: team.id, alias: 'k' });
    await admin.create('byok', { team_id: team.id, provider: 'mock', secret: 'sk-own-key-1234' });
    for (let i = 0; i < 3; i++) await call(key.key);
    await shipped(team.id, 3);
    assert.equal(q("SELECT count(*) FILTER (WHERE credential = 'team_byok' AND price_nano = 0 AND cost_nano > 0) FROM calls WHERE team_id = :'p1'", [team.id]), '3');
    assert.equal(q("SELECT credit_balance_nano FROM teams WHERE id = :'p1'", [team.id]), '0');
    assert.equal(q("SELECT count(*) FROM credit_transactions WHERE team_id = :'p1'", [team.id]), '0');
  });

  it('no sanitizer reports', T, () => {
    assert.deepEqual(gw.sanitizerReports(), []);
  });
});
