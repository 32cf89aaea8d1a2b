// credits.test.mjs - team credits (migrations/0003_jobs_credits.sql,
// daemon/admin.c team_credits and admin_payment_webhook) against a real
// PostgreSQL:
//   1. POST /admin/teams/{id}/credits: top-up, adjustment, refund; the
//      answer carries the new balance, which always equals the sum of the
//      team's credit_transactions and teams.credit_balance_nano; one audit
//      row per change; refused bodies name their field and write nothing;
//      roles (viewer reads, cannot write); unknown teams; GET newest first;
//   2. POST /webhooks/payments: HMAC-SHA256 of the raw body; credited once
//      per payment id (also under 20 concurrent deliveries); bad, foreign,
//      missing and malformed signatures are 401 and write nothing; body
//      errors name their field; unknown team 404; GET 405; no secret: 404;
//   3. a payment and a job_based job charge add up;
//   4. clean SIGTERM exit without sanitizer reports.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { newRequestId } from './lib/gateway.mjs';
import { startMigratedPg, startDbGateway, adminClient, makeTenant } from './lib/tenancy.mjs';

const T = { timeout: 30000 };
const SECRET = 'whsec-tollgate-test-0123456789';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const withSecret = (cfg) => {
  cfg.billing = { payment_webhook_secret: SECRET };
};

const parse = (text) => {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
};

/** One request: {status, body (JSON or null), text, headers}. */
async function request(gw, method, p, { body, headers = {}, timeoutMs = 10000 } = {}) {
  const r = await fetch(gw.url(p), {
    method,
    headers,
    body,
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await r.text();
  return { status: r.status, body: parse(text), text, headers: r.headers };
}

const sign = (raw, secret = SECRET) => `sha256=${crypto.createHmac('sha256', secret).update(raw).digest('hex')}`;

/** POST /webhooks/payments with raw (a string) and a signature header (null: none; undefined: the right one). */
function deliver(gw, raw, sig) {
  const headers = { 'content-type': 'application/json' };
  const s = sig === undefined ? sign(raw) : sig;
  if (s !== null) headers['x-tollgate-signature'] = s;
  return request(gw, 'POST', '/webhooks/payments', { body: raw, headers });
}

const expectError = (r, status, code, param, what) => {
  assert.equal(r.status, status, `${what}: ${r.text}`);
  assert.equal(r.body?.error?.code, code, `${what}: ${r.text}`);
  if (param !== undefined) assert.equal(r.body?.error?.param ?? null, param, `${what}: param in ${r.text}`);
};

let pg;
let gw;
let admin;

/** {sum, balance, rows} of a team from the database: sum(amount_nano) and teams.credit_balance_nano. */
function ledgerOf(teamId) {
  const [rows, sum, balance] = pg.query(
    "SELECT (SELECT count(*) FROM credit_transactions WHERE team_id = :'p1'::uuid), " +
    "(SELECT coalesce(sum(amount_nano), 0) FROM credit_transactions WHERE team_id = :'p1'::uuid), " +
    "(SELECT credit_balance_nano FROM teams WHERE id = :'p1'::uuid)",
    [teamId],
  ).trim().split('|');
  return { rows: Number(rows), sum: BigInt(sum), balance: BigInt(balance) };
}

/** The ledger is consistent and holds `nano` (a BigInt). */
function assertBalance(teamId, nano, what) {
  const l = ledgerOf(teamId);
  assert.equal(l.sum, l.balance, `${what}: sum(amount_nano) ${l.sum} = teams.credit_balance_nano ${l.balance}`);
  assert.equal(l.balance, nano, `${what}: balance`);
  return l;
}

const counts = () => pg.query('SELECT (SELECT count(*) FROM credit_transactions), (SELECT count(*) FROM audit_log)').trim();

before(async () => {
  pg = await startMigratedPg();
  gw = await startDbGateway(pg, { patch: withSecret });
  admin = adminClient(gw);
});

after(async () => {
  await gw?.stop();
  pg?.stop();
});

/* ------------------------------------------------------ 1. admin credits */

describe('admin credits', () => {
  it('top-up, adjustment and refund: 201 with the new balance; the ledger, the balance and the audit agree', T, async () => {
    const t = await makeTenant(admin, 'cr');
    const id = t.team.id;
    const path = `teams/${id}/credits`;

    const top = await admin.call('POST', path, { kind: 'topup', amount: '10.50', note: 'first', reference: 'inv-1' });
    assert.equal(top.status, 201, top.text);
    assert.equal(top.body.amount, '10.50');
    assert.equal(top.body.kind, 'topup');
    assert.equal(top.body.actor, 'master');
    assert.equal(top.body.balance, '10.50');
    assert.equal(top.body.team_id, id);
    assert.equal(top.body.note, 'first');
    assert.equal(top.body.reference, 'inv-1');
    assert.equal(typeof top.body.id, 'number');
    assert.ok(Math.abs(Date.parse(top.body.at) - Date.now()) < 60000, `at ${top.body.at}`);
    assertBalance(id, 10_500_000_000n, 'after the top-up');

    const adj = await admin.call('POST', path, { kind: 'adjustment', amount: '-0.50' });
    assert.equal(adj.status, 201, adj.text);
    assert.equal(adj.body.amount, '-0.50');
    assert.equal(adj.body.kind, 'adjustment');
    assert.equal(adj.body.balance, '10.00');
    assert.equal(adj.body.note, null);
    assert.equal(adj.body.reference, null);
    assertBalance(id, 10_000_000_000n, 'after the adjustment');

    const ref = await admin.call('POST', path, { kind: 'refund', amount: '2.25', note: 'goodwill' });
    assert.equal(ref.status, 201, ref.text);
    assert.equal(ref.body.kind, 'refund');
    assert.equal(ref.body.amount, '2.25');
    assert.equal(ref.body.balance, '12.25');
    // an adjustment may be positive, and the smallest amount is one nano
    const tiny = await admin.call('POST', path, { kind: 'adjustment', amount: '0.000000001' });
    assert.equal(tiny.status, 201, tiny.text);
    assert.equal(tiny.body.amount, '0.000000001');
    assert.equal(tiny.body.balance, '12.250000001');
    const l = assertBalance(id, 12_250_000_001n, 'after all four');
    assert.equal(l.rows, 4);
    assert.equal((await admin.get('teams', id)).credit_balance, '12.250000001');

    // the rows as stored
    assert.equal(
      pg.query("SELECT string_agg(kind || ':' || amount_nano || ':' || actor, ',' ORDER BY id) FROM credit_transactions WHERE team_id = :'p1'::uuid", [id]).trim(),
      'topup:10500000000:master,adjustment:-500000000:master,refund:2250000000:master,adjustment:1:master',
    );
    // one audit row per change, action credit_<kind>, the row as its after image
    const audit = pg.query(
      "SELECT actor, action, entity, entity_id, after->>'amount_nano', after->>'team_id' FROM audit_log WHERE entity = 'credit_transactions' AND after->>'team_id' = :'p1' ORDER BY id",
      [id],
    ).trim().split('\n').map((r) => r.split('|'));
    assert.deepEqual(audit.map((a) => a[1]), ['credit_topup', 'credit_adjustment', 'credit_refund', 'credit_adjustment']);
    assert.deepEqual(audit.map((a) => a[3]), [top, adj, ref, tiny].map((x) => String(x.body.id)));
    assert.deepEqual(audit.map((a) => a[4]), ['10500000000', '-500000000', '2250000000', '1']);
    assert.ok(audit.every((a) => a[0] === 'master' && a[2] === 'credit_transactions' && a[5] === id));
    // and through the admin API
    const viaApi = await admin.list('audit-log', `?entity=credit_transactions&entity_id=${top.body.id}`);
    assert.equal(viaApi.data.length >= 1, true);
    assert.ok(viaApi.data.some((a) => a.action === 'credit_topup' && a.actor === 'master'));

    // GET: newest first, every row with the balance
    const g = await admin.list(path);
    assert.equal(g.object, 'list');
    assert.deepEqual(g.data.map((x) => x.id), [tiny, ref, adj, top].map((x) => x.body.id));
    assert.deepEqual(g.data.map((x) => x.amount), ['0.000000001', '2.25', '-0.50', '10.50']);
    assert.ok(g.data.every((x) => x.balance === '12.250000001' && x.team_id === id));
    assert.equal(g.has_more, false);
    // another team's credits are not in it; a team with none: an empty list
    const other = await makeTenant(admin, 'cr-empty');
    const ge = await admin.list(`teams/${other.team.id}/credits`);
    assert.deepEqual(ge.data, []);
    assertBalance(other.team.id, 0n, 'the other team');
  });

  it('refused bodies: 400 naming the field, nothing written', T, async () => {
    const t = await makeTenant(admin, 'cr-bad');
    const path = `teams/${t.team.id}/credits`;
    await admin.call('POST', path, { kind: 'topup', amount: '1.00' }).then((r) => assert.equal(r.status, 201, r.text));
    const before = counts();
    const cases = [
      [{ kind: 'bonus', amount: '1.00' }, 'kind', 'unknown kind'],
      [{ kind: 'payment', amount: '1.00' }, 'kind', 'payment is the webhook\'s'],
      [{ kind: 'job', amount: '1.00' }, 'kind', 'job is the gateway\'s'],
      [{ amount: '1.00' }, 'kind', 'no kind'],
      [{ kind: 7, amount: '1.00' }, 'kind', 'kind a number'],
      [{ kind: 'topup', amount: '0' }, 'amount', 'amount 0'],
      [{ kind: 'topup', amount: '0.00' }, 'amount', 'amount 0.00'],
      [{ kind: 'adjustment', amount: '-0' }, 'amount', 'amount -0'],
      [{ kind: 'topup', amount: '-1.00' }, 'amount', 'negative top-up'],
      [{ kind: 'refund', amount: '-1.00' }, 'amount', 'negative refund'],
      [{ kind: 'topup', amount: 1 }, 'amount', 'amount a number'],
      [{ kind: 'topup', amount: null }, 'amount', 'amount null'],
      [{ kind: 'topup' }, 'amount', 'no amount'],
      [{ kind: 'topup', amount: '0.0000000001' }, 'amount', 'below one nano'],
      [{ kind: 'topup', amount: '1,00' }, 'amount', 'a comma'],
      [{ kind: 'topup', amount: ' 1.00' }, 'amount', 'a space'],
      [{ kind: 'topup', amount: '+1.00' }, 'amount', 'a plus sign'],
      [{ kind: 'topup', amount: '99999999999' }, 'amount', 'beyond int64 nano'],
      [{ kind: 'topup', amount: '1.00', extra: true }, 'extra', 'unknown field'],
      [{ kind: 'topup', amount: '1.00', team_id: t.team.id }, 'team_id', 'team_id in the body'],
      [{ kind: 'topup', amount: '1.00', note: 'x'.repeat(1001) }, 'note', 'note too long'],
      [{ kind: 'topup', amount: '1.00', note: 5 }, 'note', 'note a number'],
      [{ kind: 'topup', amount: '1.00', reference: '' }, 'reference', 'reference empty'],
      [{ kind: 'topup', amount: '1.00', reference: 'r'.repeat(201) }, 'reference', 'reference too long'],
      [{ kind: 'topup', amount: '1.00', reference: 12 }, 'reference', 'reference a number'],
      [{ kind: 'topup', amount: '1.00', note: 'é'.repeat(1001) }, 'note', 'note too long (multibyte)'],
    ];
    for (const [body, param, what] of cases) {
      const r = await admin.call('POST', path, body);
      expectError(r, 400, 'invalid_field', param, what);
    }
    for (const [raw, what] of [['{"kind":"topup","amount":"1.00"', 'malformed JSON'], ['[1]', 'an array'], ['', 'empty body'],
      ['{"kind":"topup","amount":"1.00","amount":"2.00"}', 'a duplicate member'],
      ['{"kind":"topup","amount":"1.00","note":"a\\u0000b"}', 'a NUL in a string']]) {
      const r = await admin.call('POST', path, raw);
      expectError(r, 400, 'invalid_json', undefined, what);
    }
    // the limits themselves are fine, in characters, not bytes
    const ok = await admin.call('POST', path, { kind: 'topup', amount: '1.00', note: 'é'.repeat(1000), reference: 'ü'.repeat(200) });
    assert.equal(ok.status, 201, ok.text);
    assert.equal(ok.body.note, 'é'.repeat(1000));
    assert.equal(ok.body.reference, 'ü'.repeat(200));
    assert.equal(counts(), before.split('|').map((n) => String(Number(n) + 1)).join('|'), 'only the last one was written (one row, one audit row)');
    assertBalance(t.team.id, 2_000_000_000n, 'after the refusals');
  });

  it('a reference is used once per kind: the second is refused and changes nothing', T, async () => {
    const t = await makeTenant(admin, 'cr-ref');
    const path = `teams/${t.team.id}/credits`;
    const a = await admin.call('POST', path, { kind: 'topup', amount: '3.00', reference: 'inv-dup' });
    assert.equal(a.status, 201, a.text);
    const before = counts();
    const b = await admin.call('POST', path, { kind: 'topup', amount: '3.00', reference: 'inv-dup' });
    expectError(b, 409, 'conflict', 'reference', 'the same reference again');
    assert.equal(counts(), before);
    // the same reference under another kind is another transaction
    const c = await admin.call('POST', path, { kind: 'refund', amount: '1.00', reference: 'inv-dup' });
    assert.equal(c.status, 201, c.text);
    assertBalance(t.team.id, 4_000_000_000n, 'after the duplicate');
  });

  it('concurrent top-ups: every answer\'s balance is a distinct running total; the sum is exact', T, async () => {
    const t = await makeTenant(admin, 'cr-conc');
    const path = `teams/${t.team.id}/credits`;
    const n = 12;
    const rs = await Promise.all(Array.from({ length: n }, () => admin.call('POST', path, { kind: 'topup', amount: '1.00' })));
    for (const r of rs) assert.equal(r.status, 201, r.text);
    assertBalance(t.team.id, BigInt(n) * 1_000_000_000n, 'after the concurrent top-ups');
    const seen = rs.map((r) => r.body.balance).sort((x, y) => Number(x) - Number(y));
    assert.deepEqual(seen, Array.from({ length: n }, (_, i) => `${i + 1}.00`), 'each answer saw the balance including itself');
  });

  it('roles: a viewer reads (200) and cannot write (403); an admin writes', T, async () => {
    const t = await makeTenant(admin, 'cr-role');
    const path = `teams/${t.team.id}/credits`;
    await admin.call('POST', path, { kind: 'topup', amount: '5.00' }).then((r) => assert.equal(r.status, 201, r.text));
    const viewerKey = await admin.create('admin-keys', { name: 'cr-viewer', role: 'viewer' });
    const adminKey = await admin.create('admin-keys', { name: 'cr-admin', role: 'admin' });
    const viewer = adminClient(gw, viewerKey.key);
    const before = counts();
    const w = await viewer.call('POST', path, { kind: 'topup', amount: '1.00' });
    expectError(w, 403, 'forbidden', undefined, 'viewer POST');
    assert.equal(counts(), before, 'the viewer wrote nothing');
    const r = await viewer.call('GET', path);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.data.length, 1);
    assert.equal(r.body.data[0].balance, '5.00');
    // an admin key writes, and is the actor
    const a = await adminClient(gw, adminKey.key).call('POST', path, { kind: 'adjustment', amount: '-1.00' });
    assert.equal(a.status, 201, a.text);
    assert.equal(a.body.actor, 'admin:cr-admin');
    assert.equal(a.body.balance, '4.00');
    assert.equal(pg.query("SELECT actor FROM audit_log WHERE action = 'credit_adjustment' AND entity_id = :'p1'", [String(a.body.id)]).trim(), 'admin:cr-admin');
    // no key, a wrong key
    assert.equal((await adminClient(gw, 'tg-nope').call('GET', path)).status, 401);
    assert.equal((await adminClient(gw, 'tg-nope').call('POST', path, { kind: 'topup', amount: '1.00' })).status, 401);
  });

  it('unknown and malformed team ids, other methods: nothing written', T, async () => {
    const before = counts();
    const unknown = crypto.randomUUID();
    const r = await admin.call('POST', `teams/${unknown}/credits`, { kind: 'topup', amount: '1.00' });
    expectError(r, 404, 'not_found', undefined, 'POST for an unknown team');
    assert.doesNotMatch(r.text, /violates|constraint|credit_transactions/, 'no database message in the answer');
    assert.equal(counts(), before);
    assert.equal(pg.query("SELECT count(*) FROM credit_transactions WHERE team_id = :'p1'::uuid", [unknown]).trim(), '0');
    // GET of an unknown team: an empty list (nothing to show)
    const g = await admin.call('GET', `teams/${unknown}/credits`);
    assert.equal(g.status, 200, g.text);
    assert.deepEqual(g.body.data, []);
    expectError(await admin.call('POST', 'teams/not-a-uuid/credits', { kind: 'topup', amount: '1.00' }), 404, 'not_found', undefined, 'malformed id');
    expectError(await admin.call('PUT', `teams/${unknown}/credits`, { kind: 'topup', amount: '1.00' }), 405, 'method_not_allowed', undefined, 'PUT');
    expectError(await admin.call('DELETE', `teams/${unknown}/credits`), 405, 'method_not_allowed', undefined, 'DELETE');
    assert.equal(counts(), before);
  });
});

/* ---------------------------------------------------- 2. payment webhook */

describe('payment webhook', () => {
  it('a signed payment is credited once; the same body again is a duplicate', T, async () => {
    const t = await makeTenant(admin, 'pay');
    const pid = `pay_${crypto.randomBytes(6).toString('hex')}`;
    const raw = JSON.stringify({ payment_id: pid, team_id: t.team.id, amount: '25.00' });
    const r = await deliver(gw, raw);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.credited, true);
    assert.equal(r.body.amount, '25.00');
    assert.equal(r.body.balance, '25.00');
    assert.equal(r.body.team_id, t.team.id);
    assert.equal(typeof r.body.transaction_id, 'number');
    const again = await deliver(gw, raw);
    assert.equal(again.status, 200, again.text);
    assert.deepEqual(again.body, { credited: false, duplicate: true });
    // the same payment id in another body (another amount, spacing): still a duplicate
    const other = `{ "amount": "30.00", "team_id": "${t.team.id}", "payment_id": "${pid}" }`;
    const a3 = await deliver(gw, other);
    assert.equal(a3.status, 200, a3.text);
    assert.deepEqual(a3.body, { credited: false, duplicate: true });
    assert.equal(
      pg.query("SELECT team_id, amount_nano, kind, reference, actor FROM credit_transactions WHERE reference = :'p1'", [pid]).trim(),
      `${t.team.id}|25000000000|payment|${pid}|webhook`,
      'exactly one row',
    );
    assertBalance(t.team.id, 25_000_000_000n, 'after the payment');
    // a second payment adds up; extra fields of the provider are ignored
    const pid2 = `${pid}-2`;
    const raw2 = JSON.stringify({ payment_id: pid2, team_id: t.team.id, amount: '0.75', currency: 'usd', meta: { x: 1 } });
    const r2 = await deliver(gw, raw2);
    assert.equal(r2.status, 200, r2.text);
    assert.equal(r2.body.balance, '25.75');
    assertBalance(t.team.id, 25_750_000_000n, 'after two payments');
    // an upper-case hex signature is the same signature
    const pid3 = `${pid}-3`;
    const raw3 = JSON.stringify({ payment_id: pid3, team_id: t.team.id, amount: '1' });
    const r3 = await deliver(gw, raw3, sign(raw3).replace(/^sha256=(.*)$/, (_, h) => `sha256=${h.toUpperCase()}`));
    assert.equal(r3.status, 200, r3.text);
    assert.equal(r3.body.amount, '1.00');
    // the admin view shows them, newest first
    const g = await admin.list(`teams/${t.team.id}/credits`);
    assert.deepEqual(g.data.map((x) => `${x.kind}:${x.reference}:${x.actor}`), [`payment:${pid3}:webhook`, `payment:${pid2}:webhook`, `payment:${pid}:webhook`]);
    assert.ok(g.data.every((x) => x.balance === '26.75'));
  });

  it('bad, foreign, missing and malformed signatures: 401 invalid_signature, nothing written', T, async () => {
    const t = await makeTenant(admin, 'pay-sig');
    const pid = `pay_sig_${crypto.randomBytes(6).toString('hex')}`;
    const raw = JSON.stringify({ payment_id: pid, team_id: t.team.id, amount: '5.00' });
    const good = sign(raw);
    const hex = good.slice(7);
    const flip = (h, i) => h.slice(0, i) + (h[i] === '0' ? '1' : '0') + h.slice(i + 1);
    const before = counts();
    const bad = [
      [flip(hex, 0), 'first hex digit changed'],
      [flip(hex, 63), 'last hex digit changed'],
      [flip(hex, 31), 'a middle hex digit changed'],
    ].map(([h, what]) => [`sha256=${h}`, what]);
    bad.push(
      [sign(JSON.stringify({ payment_id: pid, team_id: t.team.id, amount: '500.00' })), 'the signature of another body'],
      [sign(`${raw} `), 'the signature of the body plus a space'],
      [sign(raw, `${SECRET}x`), 'another secret'],
      [null, 'no header'],
      ['', 'an empty header'],
      ['sha256=', 'sha256= and nothing'],
      [`sha256=${'z'.repeat(64)}`, 'sha256= and non-hex'],
      [`sha256=${hex.slice(0, 62)}zz`, 'sha256= and two non-hex digits'],
      [`sha256=${hex.slice(0, 63)}`, 'one hex digit short'],
      [`sha256=${hex}0`, 'one hex digit more'],
      [hex, 'no sha256= prefix'],
      [`sha1=${hex}`, 'another algorithm'],
      [`SHA256=${hex}`, 'the prefix in capitals'],
      [`sha256=${crypto.createHash('sha256').update(raw).digest('hex')}`, 'a plain SHA-256, no key'],
    );
    for (const [sig, what] of bad) {
      const r = await deliver(gw, raw, sig);
      expectError(r, 401, 'invalid_signature', undefined, what);
    }
    // a signed body with a bad field is 400; an unsigned one stays 401 (the signature first)
    expectError(await deliver(gw, '{"payment_id":""}', null), 401, 'invalid_signature', undefined, 'unsigned bad body');
    assert.equal(counts(), before, 'nothing written');
    assertBalance(t.team.id, 0n, 'after the refusals');
    // the right signature still works afterwards
    const ok = await deliver(gw, raw, good);
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.body.credited, true);
  });

  it('body errors: 400 naming payment_id, team_id or amount; unknown team 404; GET 405', T, async () => {
    const t = await makeTenant(admin, 'pay-body');
    const team = t.team.id;
    const before = counts();
    const cases = [
      [{ team_id: team, amount: '1.00' }, 'payment_id', 'no payment_id'],
      [{ payment_id: '', team_id: team, amount: '1.00' }, 'payment_id', 'empty payment_id'],
      [{ payment_id: 42, team_id: team, amount: '1.00' }, 'payment_id', 'numeric payment_id'],
      [{ payment_id: 'p'.repeat(201), team_id: team, amount: '1.00' }, 'payment_id', 'payment_id too long'],
      [{ payment_id: 'p-nul\u0000x', team_id: team, amount: '1.00' }, 'payment_id', 'payment_id with a NUL'],
      [{ payment_id: 'p-body-1', amount: '1.00' }, 'team_id', 'no team_id'],
      [{ payment_id: 'p-body-1', team_id: 'not-a-uuid', amount: '1.00' }, 'team_id', 'team_id not a UUID'],
      [{ payment_id: 'p-body-1', team_id: 7, amount: '1.00' }, 'team_id', 'team_id a number'],
      [{ payment_id: 'p-body-1', team_id: team }, 'amount', 'no amount'],
      [{ payment_id: 'p-body-1', team_id: team, amount: 1 }, 'amount', 'amount a number'],
      [{ payment_id: 'p-body-1', team_id: team, amount: '0' }, 'amount', 'amount 0'],
      [{ payment_id: 'p-body-1', team_id: team, amount: '-5.00' }, 'amount', 'negative amount'],
      [{ payment_id: 'p-body-1', team_id: team, amount: 'ten' }, 'amount', 'amount not a number'],
      [{ payment_id: 'p-body-1', team_id: team, amount: '0.0000000001' }, 'amount', 'below one nano'],
    ];
    for (const [body, param, what] of cases) {
      const r = await deliver(gw, JSON.stringify(body));
      expectError(r, 400, 'invalid_field', param, what);
    }
    for (const [raw, what] of [['{"payment_id":', 'malformed JSON'], ['[]', 'an array'], ['', 'an empty body']]) {
      const r = await deliver(gw, raw);
      assert.equal(r.status, 400, `${what}: ${r.text}`);
    }
    // an unknown team (a valid UUID): 404 naming team_id
    const unknown = crypto.randomUUID();
    const u = await deliver(gw, JSON.stringify({ payment_id: 'p-body-unknown', team_id: unknown, amount: '1.00' }));
    expectError(u, 404, 'not_found', 'team_id', 'unknown team');
    assert.equal(counts(), before, 'nothing written');
    // other methods
    expectError(await request(gw, 'GET', '/webhooks/payments'), 405, 'method_not_allowed', undefined, 'GET');
    const put = JSON.stringify({ payment_id: 'p-put', team_id: team, amount: '1.00' });
    expectError(await request(gw, 'PUT', '/webhooks/payments', { body: put, headers: { 'x-tollgate-signature': sign(put) } }), 405, 'method_not_allowed', undefined, 'PUT');
    assert.equal(counts(), before, 'nothing written by other methods');
    // the payment id of the refused delivery is still free: a later good one credits
    const later = await deliver(gw, JSON.stringify({ payment_id: 'p-body-unknown', team_id: team, amount: '1.00' }));
    assert.equal(later.status, 200, later.text);
    assert.equal(later.body.credited, true);
  });

  it('20 concurrent deliveries of one payment: exactly one credited', T, async () => {
    const t = await makeTenant(admin, 'pay-conc');
    const pid = `pay_conc_${crypto.randomBytes(6).toString('hex')}`;
    const raw = JSON.stringify({ payment_id: pid, team_id: t.team.id, amount: '7.50' });
    const rs = await Promise.all(Array.from({ length: 20 }, () => deliver(gw, raw)));
    for (const r of rs) assert.equal(r.status, 200, r.text);
    const credited = rs.filter((r) => r.body.credited === true);
    assert.equal(credited.length, 1, rs.map((r) => r.text).join('\n'));
    assert.equal(credited[0].body.balance, '7.50');
    assert.ok(rs.filter((r) => r.body.credited === false).every((r) => r.body.duplicate === true));
    assert.equal(pg.query("SELECT count(*) FROM credit_transactions WHERE kind = 'payment' AND reference = :'p1'", [pid]).trim(), '1');
    assertBalance(t.team.id, 7_500_000_000n, 'after the storm');
    // and distinct payments at once all count
    const many = await Promise.all(Array.from({ length: 10 }, (_, i) => deliver(gw, JSON.stringify({ payment_id: `${pid}-${i}`, team_id: t.team.id, amount: '0.10' }))));
    assert.ok(many.every((r) => r.status === 200 && r.body.credited === true), many.map((r) => r.text).join('\n'));
    // each answer's balance includes itself and the payments before it: all distinct
    assert.deepEqual(many.map((r) => r.body.balance).sort(), Array.from({ length: 10 }, (_, i) => (7.6 + i / 10).toFixed(2)).sort());
    assertBalance(t.team.id, 8_500_000_000n, 'after ten distinct payments');
  });

  it('a gateway without billing.payment_webhook_secret: 404 not_configured', T, async () => {
    const t = await makeTenant(admin, 'pay-off');
    const plain = await startDbGateway(pg);
    try {
      const raw = JSON.stringify({ payment_id: 'pay-off-1', team_id: t.team.id, amount: '1.00' });
      expectError(await deliver(plain, raw), 404, 'not_configured', undefined, 'signed delivery');
      expectError(await deliver(plain, raw, null), 404, 'not_configured', undefined, 'unsigned delivery');
      assertBalance(t.team.id, 0n, 'nothing credited');
    } finally {
      const exit = await plain.stop(10000);
      assert.deepEqual(exit, { code: 0, signal: null }, plain.stderr.slice(-2000));
      assert.deepEqual(plain.sanitizerReports(), [], plain.stderr.slice(-3000));
    }
  });
});

/* ------------------------------------------- 3. payments and job charges */

describe('payments and job_based charges', () => {
  it('a payment credit and a completed job\'s charge add up', T, async () => {
    const t = await makeTenant(admin, 'pay-job');
    await admin.update('teams', t.team.id, { budget_mode: 'job_based' });
    const raw = JSON.stringify({ payment_id: `pay_job_${crypto.randomBytes(4).toString('hex')}`, team_id: t.team.id, amount: '3.00' });
    const p = await deliver(gw, raw);
    assert.equal(p.status, 200, p.text);
    assert.equal(p.body.balance, '3.00');
    const api = async (method, path, body) => {
      const r = await request(gw, method, path, {
        body: body === undefined ? undefined : JSON.stringify(body),
        headers: { authorization: `Bearer ${t.secret}`, 'content-type': 'application/json', 'x-request-id': newRequestId('cr') },
      });
      return r;
    };
    const j = await api('POST', '/v1/jobs', { type: 'paid' });
    assert.equal(j.status, 201, j.text);
    assert.match(j.body.id, UUID);
    const done = await api('POST', `/v1/jobs/${j.body.id}/complete`);
    assert.equal(done.status, 200, done.text);
    assert.equal(done.body.credits_charged, '1.00');
    assertBalance(t.team.id, 2_000_000_000n, 'payment 3.00 - job 1.00');
    const g = await admin.list(`teams/${t.team.id}/credits`);
    assert.deepEqual(g.data.map((x) => `${x.kind}:${x.amount}`), ['job:-1.00', 'payment:3.00']);
    assert.equal(g.data[0].balance, '2.00');
    assert.equal((await admin.get('teams', t.team.id)).credit_balance, '2.00');
  });
});

/* ---------------------------------------------------------------- 4. exit */

describe('shutdown', () => {
  it('SIGTERM: exit 0 without sanitizer reports', T, async () => {
    gw.signal('SIGTERM');
    const exit = await gw.waitExit(10000);
    assert.deepEqual(exit, { code: 0, signal: null }, gw.stderr.slice(-3000));
    assert.deepEqual(gw.sanitizerReports(), [], gw.stderr.slice(-3000));
    assert.deepEqual(gw.stdoutGarbage, []);
  });
});
