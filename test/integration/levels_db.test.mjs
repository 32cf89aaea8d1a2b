// levels_db.test.mjs - what "model": "auto" means for database keys
// (migration 0009): the key's power_level, else its team's, else balanced;
// a change through the admin API reaches the running gateway (NOTIFY).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { sleep } from './lib/gateway.mjs';
import { startMigratedPg, startDbGateway, adminClient } from './lib/tenancy.mjs';

const T = { timeout: 30000 };

describe('power levels of database keys and teams', () => {
  let pg;
  let gw;
  let admin;
  before(async () => {
    pg = await startMigratedPg();
    gw = await startDbGateway(pg, {
      patch: (cfg) => {
        cfg.providers.push({ name: 'e', type: 'mock' }, { name: 'b', type: 'mock' }, { name: 'p', type: 'mock' });
        cfg.models.push(
          { name: 'eco-m', level: 'eco', routes: [{ provider: 'e', model: 'small' }] },
          { name: 'bal-m', level: 'balanced', routes: [{ provider: 'b', model: 'medium' }] },
          { name: 'pre-m', level: 'precision', routes: [{ provider: 'p', model: 'large' }] },
        );
      },
    });
    admin = adminClient(gw);
  });
  after(async () => {
    await gw?.stop();
    pg?.stop();
  });

  const auto = async (key) => {
    const r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'auto', max_tokens: 8, messages: [{ role: 'user', content: 'Hi' }] }),
    });
    assert.equal(r.status, 200, await r.text());
    return r.headers.get('x-tollgate-route');
  };

  it('the key\'s level, else its team\'s, else balanced; changes are followed', T, async () => {
    const org = await admin.create('organizations', { name: 'lv' });
    const team = await admin.create('teams', { org_id: org.id, name: 'lv', credit_limit: null, power_level: 'precision' });
    assert.equal(team.power_level, 'precision');
    const plain = await admin.create('keys', { team_id: team.id, alias: 'plain' });
    const eco = await admin.create('keys', { team_id: team.id, alias: 'eco', power_level: 'eco' });
    assert.equal(eco.power_level, 'eco');
    assert.equal(await auto(plain.key), 'p/large');
    assert.equal(await auto(eco.key), 'e/small');
    const bad = await admin.call('PATCH', `teams/${team.id}`, { power_level: 'turbo' });
    assert.equal(bad.status, 400, bad.text);
    await admin.update('teams', team.id, { power_level: null });
    const until = performance.now() + 5000;
    let route;
    while ((route = await auto(plain.key)) !== 'b/medium' && performance.now() < until) await sleep(50);
    assert.equal(route, 'b/medium');
    assert.equal(await auto(eco.key), 'e/small');
  });

  it('no sanitizer reports', () => {
    assert.deepEqual(gw.sanitizerReports(), []);
  });
});
