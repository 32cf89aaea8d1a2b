// migrate.test.mjs - `tollgate migrate` against a real PostgreSQL
// (test/pgtmp.sh): an empty database gets every migration of migrations/
// recorded with its sha256, a second run does nothing, two runs at once
// take turns, --status reports without changing anything, a database that
// is newer or whose applied file changed is refused, a failing migration
// leaves nothing behind, connection errors never show the password, and
// the URL comes from --database-url, --config or TOLLGATE_DATABASE_URL.
// Then a few rules the schema itself must enforce.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runTollgate, toYaml, REPO } from './lib/gateway.mjs';
import { startPg } from './lib/pg.mjs';

const T = { timeout: 60000 };
const MIGRATIONS = path.join(REPO, 'migrations');

/** The migration files as the binary should have embedded them. */
const KNOWN = fs
  .readdirSync(MIGRATIONS)
  .filter((f) => f.endsWith('.sql'))
  .sort()
  .map((name) => ({
    name,
    version: Number(name.slice(0, 4)),
    sha256: crypto.createHash('sha256').update(fs.readFileSync(path.join(MIGRATIONS, name))).digest('hex'),
  }));
const LATEST = KNOWN.at(-1).version;

const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const SANITIZER = /AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:/;

/**
 * Runs `tollgate migrate ARGS` with TOLLGATE_DATABASE_URL unset unless env
 * sets it; asserts no sanitizer spoke. {code, stdout, stderr, out}.
 */
async function migrate(args, env = {}) {
  const r = await runTollgate(['migrate', ...args], { timeoutMs: 30000, env: { TOLLGATE_DATABASE_URL: '', ...env } });
  assert.doesNotMatch(r.stderr, SANITIZER, `sanitizer report:\n${r.stderr}`);
  assert.equal(r.signal, null, `killed by ${r.signal}; stderr:\n${r.stderr}`);
  return { ...r, out: `${r.stdout}${r.stderr}` };
}

/** Asserts exit 0 and "applied" lines for exactly the given names. */
function assertApplied(r, names) {
  assert.equal(r.code, 0, `exit ${r.code}; output:\n${r.out}`);
  const applied = [...r.stdout.matchAll(/^applied (\S+) \((\d+) ms\)$/gm)].map((m) => m[1]);
  assert.deepEqual(applied, names, `applied lines in:\n${r.stdout}`);
  assert.match(r.stdout, new RegExp(`^schema is up to date at version ${LATEST}$`, 'm'));
}

/** schema_migrations as "version|name|sha256" lines. */
const recorded = (db) => db.query('SELECT version, name, sha256 FROM schema_migrations ORDER BY version');
const expectedRows = () => KNOWN.map((m) => `${m.version}|${m.name}|${m.sha256}\n`).join('');
const exists = (db, rel) => db.query("SELECT to_regclass(:'p1') IS NOT NULL", [rel]).trim() === 't';

describe('tollgate migrate', () => {
  let pg;
  let dbs = 0;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-migrate-'));
  /** A new empty database. */
  const fresh = () => pg.createDatabase(`m${++dbs}`);
  /** A new database with every migration applied. */
  const migrated = async () => {
    const db = fresh();
    assertApplied(await migrate(['--database-url', db.url]), KNOWN.map((m) => m.name));
    return db;
  };

  before(async () => {
    pg = await startPg();
  });
  after(() => {
    pg?.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('applies every migration to an empty database and records it', T, async () => {
    const r = await migrate(['--database-url', pg.url]);
    assertApplied(r, KNOWN.map((m) => m.name));
    for (const t of ['organizations', 'teams', 'virtual_keys', 'model_aliases', 'provider_credentials', 'byok_keys', 'admin_keys', 'audit_log']) {
      assert.ok(exists(pg, t), `table ${t} exists`);
    }
    assert.equal(recorded(pg), expectedRows());
    assert.equal(pg.query('SELECT count(*) FROM schema_migrations WHERE applied_at IS NULL OR applied_at > now()'), '0\n');
  });

  it('a second run applies nothing and exits 0', T, async () => {
    const before = pg.query('SELECT version, applied_at FROM schema_migrations ORDER BY version');
    const r = await migrate(['--database-url', pg.url]);
    assertApplied(r, []);
    assert.equal(pg.query('SELECT version, applied_at FROM schema_migrations ORDER BY version'), before);
  });

  it('two migrates started at once both succeed and apply each file once', T, async () => {
    for (let round = 0; round < 3; round++) {
      const db = fresh();
      const [a, b] = await Promise.all([migrate(['--database-url', db.url]), migrate(['--database-url', db.url])]);
      for (const r of [a, b]) assert.equal(r.code, 0, `exit ${r.code}; output:\n${r.out}`);
      const applied = [...`${a.stdout}${b.stdout}`.matchAll(/^applied (\S+) /gm)].map((m) => m[1]).sort();
      assert.deepEqual(applied, KNOWN.map((m) => m.name), `each file applied by exactly one of:\n${a.out}\n---\n${b.out}`);
      assert.equal(recorded(db), expectedRows());
    }
  });

  it('--status lists applied migrations with their time and exits 0', T, async () => {
    const r = await migrate(['--status', '--database-url', pg.url]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.stdout, new RegExp(`database "tollgate" at 127\\.0\\.0\\.1:${pg.port}: schema at version ${LATEST}`));
    for (const m of KNOWN) {
      assert.match(r.stdout, new RegExp(`^  ${escapeRe(m.name)} +applied \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC$`, 'm'));
    }
    assert.match(r.stdout, new RegExp(`^schema is up to date at version ${LATEST}$`, 'm'));
  });

  it('--status on an empty database lists pending migrations, exits 0 and creates nothing', T, async () => {
    const db = fresh();
    const r = await migrate(['--status', '--database-url', db.url]);
    assert.equal(r.code, 0, r.out);
    for (const m of KNOWN) assert.match(r.stdout, new RegExp(`^  ${escapeRe(m.name)} +pending$`, 'm'));
    assert.match(r.stdout, new RegExp(`^${KNOWN.length} pending: run tollgate migrate$`, 'm'));
    assert.ok(!exists(db, 'schema_migrations'), '--status did not create schema_migrations');
    assert.ok(!exists(db, 'teams'), '--status applied nothing');
  });

  it('refuses a database newer than this tollgate (migrate and --status exit 1)', T, async () => {
    const db = await migrated();
    db.query("INSERT INTO schema_migrations (version, name, sha256) VALUES (9999, '9999_future.sql', repeat('a', 64))");
    const want = new RegExp(`database schema is at version 9999, newer than this tollgate knows \\(${LATEST}\\): upgrade tollgate`);
    const r = await migrate(['--database-url', db.url]);
    assert.equal(r.code, 1, r.out);
    assert.match(r.stderr, want);
    assert.doesNotMatch(r.stdout, /^applied /m);
    const s = await migrate(['--status', '--database-url', db.url]);
    assert.equal(s.code, 1, s.out);
    assert.match(s.stderr, want);
    assert.match(s.stdout, /^ {2}9999_future\.sql +applied .* unknown to this tollgate$/m);
  });

  it('refuses a database whose applied migration was changed, naming the file', T, async () => {
    const db = await migrated();
    db.query("UPDATE schema_migrations SET sha256 = repeat('0', 64) WHERE version = :'p1'", [KNOWN[0].version]);
    const want = new RegExp(`migration ${escapeRe(KNOWN[0].name)} was changed after it was applied`);
    const r = await migrate(['--database-url', db.url]);
    assert.equal(r.code, 1, r.out);
    assert.match(r.stderr, want);
    const s = await migrate(['--status', '--database-url', db.url]);
    assert.equal(s.code, 1, s.out);
    assert.match(s.stderr, want);
    assert.match(s.stdout, /CHANGED since/);
  });

  it('a failing migration is rolled back whole and reported with PostgreSQL\'s message', T, async () => {
    const db = fresh();
    db.query('CREATE TABLE audit_log (x integer)'); // 0001 creates audit_log after the other tables
    const r = await migrate(['--database-url', db.url]);
    assert.equal(r.code, 1, r.out);
    assert.match(r.stderr, new RegExp(`${escapeRe(KNOWN[0].name)} failed: relation "audit_log" already exists \\(SQLSTATE 42P07\\)`));
    assert.match(r.stderr, /rolled back/);
    assert.doesNotMatch(r.stdout, /^applied /m);
    assert.ok(!exists(db, 'organizations'), 'the tables created before the error are gone');
    assert.equal(db.query('SELECT count(*) FROM schema_migrations'), '0\n');
    db.query('DROP TABLE audit_log');
    assertApplied(await migrate(['--database-url', db.url]), KNOWN.map((m) => m.name));
  });

  it('an unreachable server fails with exit 1 and never shows the password', T, async () => {
    for (const url of [
      'postgres://u:s3cretpw@127.0.0.1:1/x',
      'host=127.0.0.1 port=1 user=u password=s3cretpw dbname=x',
    ]) {
      const r = await migrate(['--database-url', url]);
      assert.equal(r.code, 1, r.out);
      assert.match(r.stderr, /cannot connect to database "x" at 127\.0\.0\.1:1: .*(refused|failed)/);
      assert.ok(!r.out.includes('s3cretpw'), `password in the output:\n${r.out}`);
    }
    for (const url of ['postgres://u:s3cretpw@[::1/x', 'postgres://u:s3cretpw%zz@h/x', 'user=u password=s3cretpw dbname']) {
      const r = await migrate(['--database-url', url]);
      assert.equal(r.code, 1, r.out);
      assert.match(r.stderr, /database URL is not a PostgreSQL URL or connection string/);
      assert.ok(!r.out.includes('s3cretpw'), `password in the output:\n${r.out}`);
    }
  });

  it('without a database URL it exits 2 and says how to give one', T, async () => {
    const r = await migrate([]);
    assert.equal(r.code, 2, r.out);
    assert.match(r.stderr, /--database-url/);
    assert.match(r.stderr, /TOLLGATE_DATABASE_URL/);
    const bad = await migrate(['--bogus']);
    assert.equal(bad.code, 2, bad.out);
    assert.match(bad.stderr, /usage: tollgate migrate/);
    const both = await migrate(['--config', path.join(tmp, 'x.yaml'), '--database-url', pg.url]);
    assert.equal(both.code, 2, both.out);
    const help = await runTollgate(['--help']);
    assert.match(help.stdout, /tollgate migrate \[--config FILE \| --database-url URL\] \[--status\]/);
  });

  it('takes the URL from TOLLGATE_DATABASE_URL', T, async () => {
    const db = fresh();
    assertApplied(await migrate([], { TOLLGATE_DATABASE_URL: db.url }), KNOWN.map((m) => m.name));
  });

  it('takes the URL from database.url of --config FILE', T, async () => {
    const db = fresh();
    const config = (extra) => ({
      listen: '127.0.0.1:0',
      providers: [{ name: 'mock', type: 'mock' }],
      models: [{ name: 'mock-1', provider: 'mock' }],
      ...extra,
    });
    const file = path.join(tmp, 'with-db.yaml');
    fs.writeFileSync(file, toYaml(config({ database: { url: db.url } })));
    assertApplied(await migrate(['--config', file]), KNOWN.map((m) => m.name));
    // the file's database.url wins over TOLLGATE_DATABASE_URL
    const other = fresh();
    assertApplied(await migrate(['--config', file], { TOLLGATE_DATABASE_URL: other.url }), []);
    assert.ok(!exists(other, 'teams'));

    const nodb = path.join(tmp, 'no-db.yaml');
    fs.writeFileSync(nodb, toYaml(config({})));
    const r = await migrate(['--config', nodb]);
    assert.equal(r.code, 2, r.out);
    assert.match(r.stderr, /no database\.url/);
    assertApplied(await migrate(['--config', nodb], { TOLLGATE_DATABASE_URL: other.url }), KNOWN.map((m) => m.name));

    const broken = path.join(tmp, 'broken.yaml');
    fs.writeFileSync(broken, 'providers: [\n');
    const b = await migrate(['--config', broken]);
    assert.equal(b.code, 1, b.out);
    assert.match(b.stderr, /broken\.yaml/);
  });
});

describe('schema rules', () => {
  let pg;
  let org;
  let team;
  before(async () => {
    pg = await startPg();
    const r = await migrate(['--database-url', pg.url]);
    assert.equal(r.code, 0, r.out);
    org = pg.query("INSERT INTO organizations (name) VALUES ('acme') RETURNING id").trim();
    team = pg.query("INSERT INTO teams (org_id, name) VALUES (:'p1', 'red') RETURNING id", [org]).trim();
  });
  after(() => pg?.stop());

  const credential = (name, provider, active) =>
    pg.query(
      `INSERT INTO provider_credentials (org_id, provider, name, secret_enc, secret_mask, active, created_by, updated_by)
       VALUES (:'p1', :'p2', :'p3', 'gAAAA...', 'sk-...abcd', :'p4', 'master', 'master')`,
      [org, provider, name, active],
    );
  const rejects = (fn, sqlstate) =>
    assert.throws(fn, (e) => {
      assert.equal(e.sqlstate, sqlstate, e.message);
      return true;
    });

  it('one active provider credential per organization and provider', T, () => {
    // a unique index (23505) or an exclusion constraint (23P01, checked at
    // commit when deferred): either way the second active row is refused
    const oneActive = (e) => {
      assert.ok(['23505', '23P01'].includes(e.sqlstate), e.message);
      assert.match(e.message, /provider_credentials_one_active/);
      return true;
    };
    credential('main', 'openai', true);
    assert.throws(() => credential('second', 'openai', true), oneActive);
    credential('spare', 'openai', false);
    credential('other-provider', 'anthropic', true);
    assert.equal(pg.query("SELECT count(*) FROM provider_credentials WHERE provider = 'openai'"), '2\n');
    // one UPDATE switches the active credential
    pg.query("UPDATE provider_credentials SET active = (name = 'spare') WHERE org_id = :'p1' AND provider = 'openai'", [org]);
    assert.equal(pg.query("SELECT name FROM provider_credentials WHERE provider = 'openai' AND active"), 'spare\n');
    assert.throws(() => pg.query("UPDATE provider_credentials SET active = true WHERE org_id = :'p1' AND provider = 'openai'", [org]), oneActive);
    assert.equal(pg.query("SELECT name FROM provider_credentials WHERE provider = 'openai' AND active"), 'spare\n');
  });

  it('a BYOK key belongs to a team or to a virtual key, not both and not neither', T, () => {
    const key = pg.query(
      `INSERT INTO virtual_keys (key_hash, key_prefix, alias, team_id)
       VALUES (decode(repeat('ab', 32), 'hex'), 'tg-abcd', 'k1', :'p1') RETURNING id`,
      [team],
    ).trim();
    const byok = (teamId, keyId) =>
      pg.query(
        `INSERT INTO byok_keys (team_id, key_id, provider, secret_enc, secret_mask, created_by, updated_by)
         VALUES (${teamId ? ":'p1'" : 'NULL'}, ${keyId ? ":'p2'" : 'NULL'}, 'openai', 'gAAAA...', 'sk-...x', 'master', 'master')`,
        [teamId ?? '', keyId ?? ''],
      );
    rejects(() => byok(team, key), '23514');
    rejects(() => byok(null, null), '23514');
    byok(team, null);
    byok(null, key);
    rejects(() => byok(team, null), '23505'); // one per team and provider
  });

  it('changing a cached row notifies tollgate_cache with "<table>:<id>"', T, () => {
    const out = pg.query(
      `LISTEN tollgate_cache;
       UPDATE teams SET name = 'red2' WHERE id = :'p1';
       SELECT 1;`,
      [team],
    );
    assert.match(out, new RegExp(`notification "tollgate_cache" with payload "teams:${team}"`));
    const none = pg.query(`LISTEN tollgate_cache;
       UPDATE teams SET name = 'x' WHERE false;
       SELECT 1;`);
    assert.doesNotMatch(none, /notification/, 'no row changed, no notification');
    const gone = pg.query("INSERT INTO teams (org_id, name) VALUES (:'p1', 'blue') RETURNING id", [org]).trim().split('\n')[0];
    const del = pg.query(`LISTEN tollgate_cache;
       DELETE FROM teams WHERE id = :'p1';
       SELECT 1;`, [gone]);
    assert.match(del, new RegExp(`payload "teams:${gone}"`));
  });
});
