// rotate.test.mjs - `tollgate rotate-secrets`: stored secrets move to the
// first key of secrets.keys, stay readable, and a wrong key list changes
// nothing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runTollgate, startGateway, toYaml } from './lib/gateway.mjs';
import { SECRET_KEY, adminClient, dbConfig, startMigratedPg, waitReady } from './lib/tenancy.mjs';

const NEW_KEY = 'aGVsbG8tdGhpcy1pcy1hLW5ldy1rZXktMzItYnl0ZXM=';
const WRONG_KEY = 'd3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktISE=';

let pg;
let dir;

before(async () => {
  pg = await startMigratedPg();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-rotate-'));
});

after(() => {
  pg?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** A config file with secrets.keys = keys; returns its path. */
function configWith(name, keys) {
  const p = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(p, toYaml(dbConfig(pg, { patch: (c) => { c.secrets = { keys }; } })));
  return p;
}

const tokens = () => pg.query('SELECT id, secret_enc FROM provider_credentials UNION ALL SELECT id, secret_enc FROM byok_keys ORDER BY 1')
  .trim().split('\n').map((l) => l.split('|'));

test('rotate-secrets re-encrypts with the first key, keeps every secret readable, and is idempotent', async () => {
  // secrets written under the old key
  let gw = await startGateway(dbConfig(pg));
  await waitReady(gw);
  const admin = adminClient(gw);
  const org = await admin.create('organizations', { name: 'rot' });
  const team = await admin.create('teams', { org_id: org.id, name: 'rot' });
  const cred = await admin.create('credentials', { org_id: org.id, provider: 'up', name: 'main', secret: 'sk-rotate-cred-0001' });
  await admin.create('byok', { team_id: team.id, provider: 'up', secret: 'sk-rotate-byok-0002' });
  await gw.stop();
  const before = tokens();
  assert.equal(before.length, 2);

  // a key list that opens nothing: refused, nothing changed
  const wrong = await runTollgate(['rotate-secrets', '--config', configWith('wrong', WRONG_KEY)]);
  assert.equal(wrong.code, 1, wrong.stderr);
  assert.match(wrong.stderr, /no key of secrets\.keys opens it/);
  assert.match(wrong.stderr, /nothing changed/);
  assert.deepEqual(tokens(), before);

  // dry run: counts, changes nothing
  const both = configWith('both', `${NEW_KEY}, ${SECRET_KEY}`);
  const dry = await runTollgate(['rotate-secrets', '--config', both, '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.match(dry.stdout, /dry run: 2 secrets re-encrypted/);
  assert.deepEqual(tokens(), before);

  // the real run
  const run = await runTollgate(['rotate-secrets', '--config', both]);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stdout, /^2 secrets re-encrypted with the first key, 0 already were/);
  const afterTokens = tokens();
  assert.equal(afterTokens.length, 2);
  for (let i = 0; i < 2; i++) {
    assert.equal(afterTokens[i][0], before[i][0]);
    assert.notEqual(afterTokens[i][1], before[i][1], 'the token changed');
    assert.match(afterTokens[i][1], /^gAAAAA/, 'still a Fernet token');
  }
  assert.equal(pg.query("SELECT count(*) FROM audit_log WHERE action = 'rotate_secrets'").trim(), '1');

  // again: nothing to do
  const again = await runTollgate(['rotate-secrets', '--config', both]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /^0 secrets re-encrypted with the first key, 2 already were/);

  // only the new key is needed now: an owner reads the same plaintext
  gw = await startGateway(toYaml(dbConfig(pg, { patch: (c) => { c.secrets = { keys: NEW_KEY }; } })));
  try {
    await waitReady(gw);
    const got = await adminClient(gw).get('credentials', cred.id, '?include_secret=true');
    assert.equal(got.secret, 'sk-rotate-cred-0001');
    assert.equal(gw.stderrLines.filter((l) => /does not decrypt/.test(l)).length, 0, gw.stderr);
  } finally {
    await gw.stop();
  }
  // and the output never carried a plaintext secret
  for (const r of [wrong, dry, run, again]) {
    assert.ok(!`${r.stdout}${r.stderr}`.includes('sk-rotate'), 'no plaintext secret in the CLI output');
  }
});

test('rotate-secrets without a database or keys is a usage error', async () => {
  const noKeys = path.join(dir, 'nokeys.yaml');
  fs.writeFileSync(noKeys, toYaml(dbConfig(pg, { patch: (c) => { delete c.secrets; } })));
  const r = await runTollgate(['rotate-secrets', '--config', noKeys]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /no secrets\.keys/);
  const bad = await runTollgate(['rotate-secrets', '--bogus']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /unknown argument '--bogus'/);
});
