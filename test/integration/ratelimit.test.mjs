// ratelimit.test.mjs - rpm and tpm per key and per team, held across two
// instances on one database (migration 0005, daemon/ratelimit.c).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { KEY, newRequestId } from './lib/gateway.mjs';
import { startMigratedPg, startDbGateway, adminClient, makeTenant } from './lib/tenancy.mjs';

const T = { timeout: 60000 };

/** One chat call on gw with key; {status, headers, body}. */
function chat(gw, key, agent, { model = 'mock-1', maxTokens } = {}) {
  const body = JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }], ...(maxTokens ? { max_tokens: maxTokens } : {}) });
  return new Promise((resolve, reject) => {
    const req = http.request(gw.url('/v1/chat/completions'), {
      method: 'POST', agent,
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-request-id': newRequestId('rl') },
    }, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => {
        let parsed = null;
        try { parsed = JSON.parse(data); } catch { parsed = null; }
        resolve({ status: res.statusCode, headers: res.headers, body: parsed });
      });
    });
    req.on('error', reject);
    req.setTimeout(15000, () => req.destroy(new Error('timeout')));
    req.end(body);
  });
}

/** Fires n calls spread over the gateways at once; the statuses. */
async function burst(gws, key, n, opts) {
  const agents = gws.map(() => new http.Agent({ keepAlive: true, maxSockets: 50 }));
  try {
    const rs = await Promise.all(Array.from({ length: n }, (_, i) => chat(gws[i % gws.length], key, agents[i % gws.length], opts)));
    return rs;
  } finally {
    agents.forEach((a) => a.destroy());
  }
}

const count = (rs, status) => rs.filter((r) => r.status === status).length;

/** Seconds left in the current UTC minute: the window boundary. */
const secondsLeftInMinute = () => 60 - (Date.now() / 1000) % 60;

describe('rate limits across two instances', () => {
  let pg;
  let a;
  let b;
  let admin;
  before(async () => {
    pg = await startMigratedPg();
    [a, b] = await Promise.all([startDbGateway(pg), startDbGateway(pg)]);
    admin = adminClient(a);
  });
  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    pg?.stop();
  });

  /** Waits until at least `need` seconds are left in the minute, so one burst stays in one window. */
  async function sameWindow(need = 15) {
    const left = secondsLeftInMinute();
    if (left < need) await new Promise((r) => setTimeout(r, (left + 0.5) * 1000));
  }

  it('a key\'s rpm holds over both instances, and a refusal is a 429 with the headers', T, async () => {
    const t = await makeTenant(admin, 'rpm', { rpm: 40 });
    await sameWindow();
    const rs = await burst([a, b], t.secret, 100);
    assert.equal(count(rs, 200) + count(rs, 429), 100, `statuses: ${[...new Set(rs.map((r) => r.status))]}`);
    // never above the limit; slices held unused at the end may leave it a little below
    assert.ok(count(rs, 200) <= 40, `served ${count(rs, 200)} > 40`);
    assert.ok(count(rs, 200) >= 36, `served only ${count(rs, 200)} of 40`);
    const refused = rs.find((r) => r.status === 429);
    assert.equal(refused.body.error.type, 'rate_limit_error');
    assert.equal(refused.body.error.code, 'rate_limit_exceeded');
    assert.match(refused.body.error.message, /40 requests per minute/);
    assert.equal(refused.headers['x-ratelimit-limit-requests'], '40');
    assert.equal(refused.headers['x-ratelimit-remaining-requests'], '0');
    assert.ok(Number(refused.headers['retry-after']) >= 1 && Number(refused.headers['retry-after']) <= 60);
    // the database granted no more than the limit in the window
    const granted = Number(pg.query("SELECT coalesce(sum(granted), 0) FROM rate_windows WHERE scope = 'key' AND scope_id = :'p1' AND kind = 'rpm'", [t.key.id]).trim());
    assert.ok(granted <= 40, `granted ${granted}`);
  });

  it('a team\'s rpm covers all its keys together', T, async () => {
    const t = await makeTenant(admin, 'team-rpm');
    await admin.update('teams', t.team.id, { rpm: 30 });
    const k2 = await admin.create('keys', { team_id: t.team.id, alias: 'second' });
    await new Promise((r) => setTimeout(r, 300)); // the team change reaches b
    await sameWindow();
    const rs = await Promise.all([burst([a, b], t.secret, 40), burst([b, a], k2.key, 40)]);
    const served = count(rs[0], 200) + count(rs[1], 200);
    assert.ok(served <= 30 && served >= 26, `served ${served} of the team's 30`);
    const refused = [...rs[0], ...rs[1]].find((r) => r.status === 429);
    assert.match(refused.body.error.message, /this team: 30 requests per minute/);
  });

  it('a key\'s tpm counts the estimate at admission and the real tokens at the end', T, async () => {
    // each call: a short prompt and 16 completion tokens from the mock; max_tokens 16
    const t = await makeTenant(admin, 'tpm', { tpm: 500 });
    await sameWindow();
    const rs = await burst([a, b], t.secret, 60, { maxTokens: 16 });
    const ok = rs.filter((r) => r.status === 200);
    const used = ok.reduce((s, r) => s + r.body.usage.total_tokens, 0);
    assert.ok(used <= 500, `used ${used} tokens of 500`);
    assert.ok(ok.length >= 10, `only ${ok.length} calls served`);
    const refused = rs.find((r) => r.status === 429);
    assert.ok(refused, 'some calls refused');
    assert.equal(refused.headers['x-ratelimit-limit-tokens'], '500');
  });

  it('config keys keep their per-instance limit; unlimited database keys are not slowed', T, async () => {
    const t = await makeTenant(admin, 'free');
    await new Promise((r) => setTimeout(r, 300)); // the new key reaches b (NOTIFY)
    const rs = await burst([a, b], t.secret, 30);
    assert.equal(count(rs, 200), 30);
    assert.equal(pg.query("SELECT count(*) FROM rate_windows WHERE scope_id = :'p1'", [t.key.id]).trim(), '0');
    const c = await chat(a, KEY, undefined);
    assert.equal(c.status, 200);
  });

  it('no sanitizer reports', T, async () => {
    assert.deepEqual(a.sanitizerReports(), []);
    assert.deepEqual(b.sanitizerReports(), []);
  });
});
