// credit_limit.test.mjs - teams in a consumption mode are refused calls when
// their credits run out (migration 0006, daemon/leases.c "credit" scope):
//   1. a new team is prepaid (credit_limit 0): no credits, 402
//      credits_exhausted in the caller's format; a top-up is seen (the
//      refusal is checked again after a second) and calls run until the
//      credits are used, never below zero;
//   2. two instances, 240 concurrent requests against credits for 50 calls:
//      the settled spend never exceeds the balance, the credits end nearly
//      used, and once the instances have stopped (leases returned) what
//      they reported equals what the ledger charged (spent_nano back to 0);
//   3. consumption_tokens counts tokens / tokens_per_credit the same way;
//   4. an overdraft (credit_limit 0.0001) stops at -0.0001; credit_limit
//      null (postpaid) never refuses and the balance goes negative;
//   5. job_based: a job starts only while the balance covers one credit;
//   6. clean exits, no sanitizer reports.
//
// Price: mock-1 at 1.00 / 2.00 USD per 1M tokens, max_tokens 16 and a short
// prompt: a call's worst case is about 40,000 nano-USD; actual prices are
// read back from the calls table.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { startGateway, newRequestId, sleep } from './lib/gateway.mjs';
import { startMigratedPg, dbConfig, waitReady, adminClient, parseJson, untilRefused } from './lib/tenancy.mjs';

const T = { timeout: 60000 };

function creditConfig(pg, instance) {
  return dbConfig(pg, {
    patch: (cfg) => {
      const m = cfg.models.find((x) => x.name === 'mock-1');
      m.price = { input: '1.00', output: '2.00' };
      cfg.ledger = { ship_interval: '20ms' };
      cfg.instance_id = instance;
    },
  });
}

async function call(gw, key, { anthropic = false } = {}) {
  const body = JSON.stringify({ model: 'mock-1', max_tokens: 16, messages: [{ role: 'user', content: 'Hi' }] });
  const r = await fetch(gw.url(anthropic ? '/v1/messages' : '/v1/chat/completions'), {
    method: 'POST',
    headers: {
      ...(anthropic ? { 'x-api-key': key, 'anthropic-version': '2023-06-01' } : { authorization: `Bearer ${key}` }),
      'content-type': 'application/json',
      'x-request-id': newRequestId('cred'),
    },
    body,
  });
  const text = await r.text();
  return { status: r.status, text, body: parseJson(text) };
}

/** Calls until a non-200 (at most `limit`); {ok, last}. */
const exhaust = (gw, key, limit = 100) => untilRefused(() => call(gw, key), limit);

describe('credits run out: calls are refused', () => {
  let pg;
  let a;
  let b;
  let admin;
  const q = (sql, p) => pg.query(sql, p).trim();
  const num = (sql, p) => Number(q(sql, p) || 0);
  const balance = (team) => num("SELECT credit_balance_nano FROM teams WHERE id = :'p1'", [team]);

  /** Waits until the ledger has n 200 rows of the team and has charged them. */
  async function shipped(team, n) {
    const until = performance.now() + 10000;
    for (;;) {
      const got = num("SELECT count(*) FROM calls WHERE team_id = :'p1' AND status = 200", [team]);
      if (got >= n) return;
      if (performance.now() > until) throw new Error(`the ledger has ${got} of ${n} calls`);
      await sleep(25);
    }
  }

  async function tenant(name, teamFields = {}) {
    const org = await admin.create('organizations', { name: `org-${name}` });
    const team = await admin.create('teams', { org_id: org.id, name: `team-${name}`, ...teamFields });
    const key = await admin.create('keys', { team_id: team.id, alias: `key-${name}` });
    // both instances know the key before calls count
    for (const gw of [a, b]) {
      for (let i = 0; i < 100; i++) {
        const r = await fetch(gw.url('/v1/models'), { headers: { authorization: `Bearer ${key.key}` } });
        if (r.status === 200) break;
        await sleep(20);
      }
    }
    return { team, key: key.key };
  }

  before(async () => {
    pg = await startMigratedPg();
    a = await startGateway(creditConfig(pg, 'cred-a'));
    b = await startGateway(creditConfig(pg, 'cred-b'));
    await waitReady(a, 15000);
    await waitReady(b, 15000);
    admin = adminClient(a);
  });
  after(async () => {
    await a?.stop().catch(() => {});
    await b?.stop().catch(() => {});
    pg?.stop();
  });

  it('a new team is prepaid: refused at zero in the caller\'s format, a top-up is seen, never below zero', T, async () => {
    const { team, key } = await tenant('prepaid');
    assert.equal(team.credit_limit, '0.00');
    assert.equal(q("SELECT count(*) FROM budgets WHERE scope = 'credit' AND scope_id = :'p1'", [team.id]), '1');

    const r = await call(a, key);
    assert.equal(r.status, 402, r.text);
    assert.equal(r.body.error.type, 'insufficient_quota');
    assert.equal(r.body.error.code, 'credits_exhausted');
    assert.match(r.body.error.message, new RegExp(`Out of credits for this team \\(${team.id}\\): \\$0\\.00 of credit left`));
    const ra = await call(a, key, { anthropic: true });
    assert.equal(ra.status, 402, ra.text);
    assert.equal(ra.body.type, 'error');
    assert.equal(ra.body.error.type, 'billing_error');
    assert.match(ra.body.error.message, /Out of credits/);

    // credits for 5 calls' worst case: seen after the refusal is a second old
    await admin.call('POST', `teams/${team.id}/credits`, { kind: 'topup', amount: '0.0002' });
    await sleep(1100);
    const { ok, last } = await exhaust(a, key);
    assert.ok(ok >= 4 && ok <= 5, `${ok} calls on credits for 5: ${last.text}`);
    assert.equal(last.status, 402, last.text);
    await shipped(team.id, ok);
    const spent = num("SELECT sum(price_nano) FROM calls WHERE team_id = :'p1' AND status = 200", [team.id]);
    assert.ok(spent <= 200000, `spent ${spent}`);
    assert.equal(balance(team.id), 200000 - spent);
    assert.ok(balance(team.id) >= 0);
  });

  it('2 instances, 240 concurrent requests on credits for 50 calls: never over, nearly used, reports equal charges', T, async () => {
    const { team, key } = await tenant('race');
    await admin.call('POST', `teams/${team.id}/credits`, { kind: 'topup', amount: '0.002' });
    const results = await Promise.all(Array.from({ length: 240 }, (_, i) => call(i % 2 ? a : b, key)));
    const ok = results.filter((r) => r.status === 200).length;
    const other = results.filter((r) => r.status !== 200 && r.status !== 402);
    assert.deepEqual(other.map((r) => r.status), [], 'only 200 and 402');
    for (const r of results.filter((x) => x.status === 402)) assert.equal(r.body.error.code, 'credits_exhausted');
    await shipped(team.id, ok);
    const spent = num("SELECT sum(price_nano) FROM calls WHERE team_id = :'p1' AND status = 200", [team.id]);
    const worst = num("SELECT max(price_nano) FROM calls WHERE team_id = :'p1' AND status = 200", [team.id]);
    assert.ok(spent <= 2000000, `settled ${spent} over the 2,000,000 balance`);
    assert.equal(balance(team.id), 2000000 - spent);
    // refused only when what was left could not cover a call on either instance
    assert.ok(2000000 - spent < 4 * worst, `${2000000 - spent} left unused after ${ok} calls`);
  });

  it('consumption_tokens: tokens / tokens_per_credit, refused when the credits are used', T, async () => {
    const { team, key } = await tenant('tokens', { budget_mode: 'consumption_tokens', tokens_per_credit: 1000 });
    // 0.2 credit = 200 tokens; a call is at most 8 + 16 tokens
    await admin.call('POST', `teams/${team.id}/credits`, { kind: 'topup', amount: '0.2' });
    const { ok, last } = await exhaust(b, key);
    assert.equal(last.status, 402, last.text);
    assert.match(last.body.error.message, /credits left/);
    await shipped(team.id, ok);
    const tokens = num("SELECT sum(prompt_tokens + completion_tokens) FROM calls WHERE team_id = :'p1' AND status = 200", [team.id]);
    assert.ok(ok >= 5, `${ok} calls`);
    assert.ok(tokens <= 200, `${tokens} tokens on credits for 200`);
    assert.equal(balance(team.id), 200000000 - tokens * 1000000);
  });

  it('an overdraft stops at -credit_limit; credit_limit null never refuses', T, async () => {
    const over = await tenant('overdraft', { credit_limit: '0.0001' });
    assert.equal(over.team.credit_limit, '0.0001');
    const { ok, last } = await exhaust(a, over.key);
    assert.equal(last.status, 402, last.text);
    assert.ok(ok >= 1 && ok <= 2, `${ok} calls on a 0.0001 overdraft`);
    await shipped(over.team.id, ok);
    assert.ok(balance(over.team.id) >= -100000 && balance(over.team.id) < 0, `balance ${balance(over.team.id)}`);

    const post = await tenant('postpaid', { credit_limit: null });
    assert.equal(post.team.credit_limit, null);
    assert.equal(q("SELECT count(*) FROM budgets WHERE scope = 'credit' AND scope_id = :'p1'", [post.team.id]), '0');
    for (let i = 0; i < 5; i++) assert.equal((await call(b, post.key)).status, 200);
    await shipped(post.team.id, 5);
    assert.ok(balance(post.team.id) < 0);

    // enforcing it later takes effect on the running instances
    await admin.update('teams', post.team.id, { credit_limit: '0' });
    const until = performance.now() + 5000;
    let r;
    do {
      r = await call(b, post.key);
      if (r.status === 402) break;
      await sleep(50);
    } while (performance.now() < until);
    assert.equal(r.status, 402, r.text);
  });

  it('job_based: a job starts only while the balance covers a credit', T, async () => {
    const { team, key } = await tenant('jobs', { budget_mode: 'job_based' });
    const create = () => fetch(a.url('/v1/jobs'), {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'summarize' }),
    });
    let r = await create();
    assert.equal(r.status, 402);
    const e = await r.json();
    assert.equal(e.error.code, 'credits_exhausted');
    assert.equal(e.error.type, 'insufficient_quota');
    await admin.call('POST', `teams/${team.id}/credits`, { kind: 'topup', amount: '1' });
    r = await create();
    assert.equal(r.status, 201, await r.text());
  });

  it('calls admitted before an instance knows a team\'s credits are enforced are charged, not taken from the reported spend', T, async () => {
    const { team, key } = await tenant('late', { credit_limit: null });
    // what setting a limit does in the database (the trigger of 0006),
    // before the instances have reloaded the team: they still admit its
    // calls without a credit lease, so nothing of them is reported
    q("INSERT INTO budgets (scope, scope_id, max_nano) VALUES ('credit', :'p1', 0)", [team.id]);
    for (let i = 0; i < 3; i++) assert.equal((await call(a, key)).status, 200);
    await shipped(team.id, 3);
    const spent = num("SELECT sum(price_nano) FROM calls WHERE team_id = :'p1' AND status = 200", [team.id]);
    assert.ok(spent > 0);
    const until = performance.now() + 5000;
    while (balance(team.id) !== -spent && performance.now() < until) await sleep(25);
    assert.equal(balance(team.id), -spent, 'the calls are charged');
    assert.equal(q("SELECT spent_nano FROM budgets WHERE scope = 'credit' AND scope_id = :'p1'", [team.id]), '0',
      'nothing was reported, so nothing comes out of the reported spend');
  });

  it('stopped instances return their leases: what was reported equals what was charged', T, async () => {
    for (const gw of [a, b]) {
      const exit = await gw.stop(15000);
      assert.deepEqual(exit, { code: 0, signal: null }, gw.stderrLines.slice(-20).join('\n'));
      assert.deepEqual(gw.sanitizerReports(), []);
    }
    assert.equal(q("SELECT count(*) FROM budget_leases WHERE scope = 'credit'"), '0');
    assert.equal(q("SELECT coalesce(string_agg(scope_id || ':' || spent_nano, ','), '') FROM budgets WHERE scope = 'credit' AND spent_nano <> 0"), '');
    // and every balance is the sum of its transactions
    assert.equal(q('SELECT count(*) FROM teams t WHERE credit_balance_nano <> (SELECT coalesce(sum(amount_nano), 0) FROM credit_transactions c WHERE c.team_id = t.id)'), '0');
  });
});
