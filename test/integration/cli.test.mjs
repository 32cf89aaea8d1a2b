// cli.test.mjs - the command line: --version, check-config on good and bad
// files, and a daemon that refuses to start on a bad config.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { runTollgate, startGateway, baseConfig, toYaml, REPO } from './lib/gateway.mjs';

const T = { timeout: 15000 };
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-cli-'));
const write = (name, text) => {
  const p = path.join(dir, name);
  fs.writeFileSync(p, text);
  return p;
};

describe('tollgate command line', () => {
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('--version prints the project version and exits 0', T, async () => {
    const version = /project\(tollgate VERSION (\d+\.\d+\.\d+)/.exec(fs.readFileSync(path.join(REPO, 'CMakeLists.txt'), 'utf8'))[1];
    const r = await runTollgate(['--version']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(`${r.stdout}${r.stderr}`.includes(version), `output mentions ${version}: ${r.stdout}${r.stderr}`);
  });

  it('keygen prints a fresh Fernet key that python3-cryptography accepts', T, async () => {
    const keys = [];
    for (let i = 0; i < 2; i++) {
      const r = await runTollgate(['keygen']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^[A-Za-z0-9_-]{43}=\n$/);
      keys.push(r.stdout.trim());
    }
    assert.notEqual(keys[0], keys[1]);
    assert.equal(Buffer.from(keys[0], 'base64url').length, 32);
    // Debian's interpreter: install-deps puts python3-cryptography there
    const py = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
    const out = execFileSync(py, ['-c',
      'import sys; from cryptography.fernet import Fernet; f = Fernet(sys.argv[1].encode()); print(f.decrypt(f.encrypt(b"ok")).decode())',
      keys[0]]).toString().trim();
    assert.equal(out, 'ok');
    const bad = await runTollgate(['keygen', 'extra']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /usage: tollgate keygen/);
  });

  it('check-config accepts the reference config', T, async () => {
    const r = await runTollgate(['check-config', write('good.yaml', toYaml(baseConfig('https://localhost:9/v1')))]);
    assert.equal(r.code, 0, r.stderr);
  });

  for (const [what, text] of [
    ['broken YAML', 'listen: "127.0.0.1:0"\nproviders: [\n'],
    ['a model on an unknown provider', toYaml(baseConfig('https://localhost:9/v1', (c) => c.models.push({ name: 'ghost', provider: 'nope' })))],
    ['a bad duration', toYaml(baseConfig('https://localhost:9/v1', (c) => { c.timeouts.header = 'soon'; }))],
    ['a missing ca_file', toYaml(baseConfig('https://localhost:9/v1', (c) => { c.providers[0].ca_file = '/nonexistent/ca.crt'; }))],
  ]) {
    it(`check-config rejects ${what} with exit 1 and a message`, T, async () => {
      const r = await runTollgate(['check-config', write(`${what.replace(/\W+/g, '_')}.yaml`, text)]);
      assert.equal(r.code, 1, `exit ${r.code}; stderr: ${r.stderr}`);
      assert.ok(r.stderr.trim().length > 0, 'it says why on stderr');
    });
  }

  it('check-config on a file that does not exist exits 1', T, async () => {
    const r = await runTollgate(['check-config', path.join(dir, 'missing.yaml')]);
    assert.equal(r.code, 1, r.stderr);
  });

  it('the daemon does not start on a bad config', T, async () => {
    await assert.rejects(startGateway('listen: "127.0.0.1:0"\nproviders: [\n', { readyTimeoutMs: 5000 }), /exited/);
  });
});
