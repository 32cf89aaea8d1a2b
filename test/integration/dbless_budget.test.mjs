// dbless_budget.test.mjs - a config key's budget without a database: kept
// by the instance, and rebuilt from the spool (the ledger) at start, so a
// restart does not forget spend.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { baseConfig, startGateway, KEY, newRequestId } from './lib/gateway.mjs';

test('a config key budget holds, survives a restart through the spool, and 402s with its reset', { timeout: 60000 }, async () => {
  const spool = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-dbless-'));
  const cfg = baseConfig('https://127.0.0.1:9/v1', (c) => {
    c.models.push({ name: 'priced', provider: 'mock', price: { input: '1.00', output: '2.00' } });
    c.keys[0].max_budget = '0.0002';
    c.keys[0].budget_duration = '1d';
    c.ledger = { spool_dir: spool };
  });
  const call = async (gw) => {
    const r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', 'x-request-id': newRequestId('dbl') },
      body: JSON.stringify({ model: 'priced', max_tokens: 16, messages: [{ role: 'user', content: 'Hi' }] }),
    });
    return { status: r.status, body: await r.json(), headers: r.headers };
  };
  let gw = await startGateway(cfg);
  let served = 0;
  try {
    const first = await call(gw);
    assert.equal(first.status, 200);
    served = 1;
    assert.match(first.headers.get('x-tollgate-budget-remaining-usd'), /^0\.000\d+$/);
    for (let i = 0; i < 10; i++) if ((await call(gw)).status === 200) served++;
    assert.ok(served >= 3 && served < 11, `served ${served}`);
    const refused = await call(gw);
    assert.equal(refused.status, 402);
    assert.equal(refused.body.error.code, 'budget_exceeded');
    assert.match(refused.body.error.message, /this key \(test\).*resets at \d{4}-\d\d-\d\dT00:00:00Z/);
    assert.deepEqual(gw.sanitizerReports(), []);
  } finally {
    await gw.stop();
  }
  // the spend of the first run is read back from the spool
  gw = await startGateway(cfg);
  try {
    await gw.waitForStderr(/budgets of config keys rebuilt from the spool: \d+ calls this period/);
    const again = await call(gw);
    assert.equal(again.status, 402, 'the restart remembers the spend');
    // a key without a budget is unaffected
    assert.deepEqual(gw.sanitizerReports(), []);
  } finally {
    await gw.stop();
    fs.rmSync(spool, { recursive: true, force: true });
  }
});
