// admin.test.mjs - the admin API (docs/admin-api.md) against a real migrated
// PostgreSQL: CRUD of every resource, pagination, validation errors that
// name their field, conflicts, 404/405, roles, secrets that never leave
// (responses, database dump, logs), the audit log, and the request path
// using what the admin API made, at once (no sleep). Last, a gateway
// without a database answers 503 no_database.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { startGateway, baseConfig, newRequestId, sleep, KEY, UPSTREAM_KEY } from './lib/gateway.mjs';
import { startMigratedPg, startDbGateway, adminClient, MASTER_KEY } from './lib/tenancy.mjs';
import { startUpstream } from './lib/upstream.mjs';

const T = { timeout: 20000 };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$/;
const VKEY = /^tg-[A-Za-z0-9_-]{43}$/;
const AKEY = /^tga-[A-Za-z0-9_-]{43}$/;
const NO_SUCH = '00000000-0000-4000-8000-000000000000';
const TYPES = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'not_found_error',
  405: 'invalid_request_error',
  409: 'conflict_error',
  503: 'unavailable_error',
};

const sha256hex = (s) => crypto.createHash('sha256').update(s).digest('hex');

/** Asserts r is the error {status, type, code, param}; returns body.error. */
function assertErr(r, status, { code, param, message } = {}) {
  assert.equal(r.status, status, `expected ${status}, got ${r.status}: ${r.text}`);
  const e = r.body?.error;
  assert.ok(e && typeof e.message === 'string' && e.message.length > 0, `error body: ${r.text}`);
  assert.equal(e.type, TYPES[status], `type in ${r.text}`);
  if (code !== undefined) assert.equal(e.code, code, `code in ${r.text}`);
  if (param !== undefined) assert.equal(e.param, param, `param in ${r.text}`);
  if (message !== undefined) assert.match(e.message, message, `message in ${r.text}`);
  return e;
}

/** pg_dump of the same major version as the server (pgtmp.sh's bindir), else PATH's. */
function pgDumpBin() {
  const base = '/usr/lib/postgresql';
  try {
    const vers = fs.readdirSync(base).filter((v) => fs.existsSync(`${base}/${v}/bin/pg_dump`));
    vers.sort((a, b) => Number(a) - Number(b));
    if (vers.length) return `${base}/${vers.at(-1)}/bin/pg_dump`;
  } catch {
    /* not a Debian layout */
  }
  return 'pg_dump';
}

describe('admin API', () => {
  let pg;
  let gw;
  let up; // the TLS mock upstream of provider `up`: it records the key it is sent
  let admin; // master key, every response recorded
  /** Every admin response text seen: {path, text}. */
  const transcript = [];
  /** Every plaintext key and secret made, to look for where it must not be. */
  const plaintexts = [];

  /** adminClient(gw, key) whose calls are recorded in transcript. */
  const client = (key = MASTER_KEY) => {
    const c = adminClient(gw, key);
    const call = async (method, path, body, headers) => {
      const r = await c.call(method, path, body, headers);
      transcript.push({ path, text: r.text });
      return r;
    };
    const want = (n) => (r) => {
      if (r.status !== n) throw new Error(`admin API: expected ${n}, got ${r.status}: ${r.text}`);
      return r.body;
    };
    return {
      call,
      create: (res, body) => call('POST', res, body).then(want(201)),
      get: (res, id, query = '') => call('GET', `${res}/${id}${query}`).then(want(200)),
      list: (res, query = '') => call('GET', `${res}${query}`).then(want(200)),
      update: (res, id, body) => call('PATCH', `${res}/${id}`, body).then(want(200)),
      remove: (res, id) => call('DELETE', `${res}/${id}`).then(want(200)),
      action: (res, id, name) => call('POST', `${res}/${id}/${name}`).then(want(200)),
    };
  };

  /** The audit rows of one entity id, newest first. */
  const auditOf = async (entityId) => (await admin.list('audit-log', `?entity_id=${encodeURIComponent(entityId)}&limit=500`)).data;

  let n = 0;
  /** A fresh org + team (+ key with keyFields): names unique per call. */
  const tenant = async (keyFields) => {
    const tag = `t${++n}`;
    const org = await admin.create('organizations', { name: `org-${tag}` });
    const team = await admin.create('teams', { org_id: org.id, name: `team-${tag}` });
    if (!keyFields) return { org, team };
    const key = await admin.create('keys', { team_id: team.id, alias: `key-${tag}`, ...keyFields });
    plaintexts.push(key.key);
    return { org, team, key, secret: key.key };
  };

  /** A chat completion on the request path with a virtual key. */
  const chat = async (key, model = 'mock-1', headers = {}) => {
    const r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hello' }], max_tokens: 4 }),
    });
    const text = await r.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { status: r.status, body, text };
  };
  const modelIds = async (key) => {
    const r = await fetch(gw.url('/v1/models'), { headers: { authorization: `Bearer ${key}` } });
    assert.equal(r.status, 200);
    return (await r.json()).data.map((m) => m.id);
  };

  before(async () => {
    pg = await startMigratedPg();
    // mock-cfg: a config alias with a provider model of its own, to compare
    // a database alias with
    up = await startUpstream();
    gw = await startDbGateway(pg, { upstreamUrl: up.baseUrl, patch: (cfg) => cfg.models.push({ name: 'mock-cfg', provider: 'mock', model: 'mock-inner' }) });
    admin = client();
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
    pg?.stop();
  });

  /* ------------------------------------------------------------ CRUD */

  describe('CRUD', () => {
    it('organizations: create, get, list, update, delete, with audit rows', T, async () => {
      const org = await admin.create('organizations', { name: 'crud-org', metadata: { tier: 'gold' } });
      assert.match(org.id, UUID);
      assert.deepEqual(Object.keys(org).sort(), ['budget_duration', 'created_at', 'id', 'max_budget', 'metadata', 'name', 'updated_at']);
      assert.equal(org.max_budget, null);
      assert.equal(org.budget_duration, null);
      assert.equal(org.name, 'crud-org');
      assert.deepEqual(org.metadata, { tier: 'gold' });
      assert.match(org.created_at, TIME);
      assert.match(org.updated_at, TIME);
      assert.deepEqual(await admin.get('organizations', org.id), org);
      assert.equal(pg.query("SELECT name, metadata->>'tier' FROM organizations WHERE id = :'p1'", [org.id]), 'crud-org|gold\n');

      // lengths are characters, as the schema's length() counts them
      const wide = await admin.create('organizations', { name: 'ü'.repeat(200) });
      assert.equal(wide.name, 'ü'.repeat(200));
      const plain = await admin.create('organizations', { name: 'crud-org-2' });
      assert.deepEqual(plain.metadata, {}, 'metadata defaults to {}');
      const list = await admin.list('organizations');
      assert.equal(list.object, 'list');
      assert.equal(list.has_more, false);
      assert.equal(list.next_offset, null);
      assert.ok(list.data.some((o) => o.id === org.id && o.name === 'crud-org'));

      const up = await admin.update('organizations', org.id, { name: 'crud-org-renamed' });
      assert.equal(up.id, org.id);
      assert.equal(up.name, 'crud-org-renamed');
      assert.deepEqual(up.metadata, { tier: 'gold' }, 'fields not named are kept');
      assert.equal(up.created_at, org.created_at);
      assert.ok(Date.parse(up.updated_at) >= Date.parse(org.updated_at));

      assert.deepEqual(await admin.remove('organizations', org.id), { id: org.id, deleted: true });
      assertErr(await admin.call('GET', `organizations/${org.id}`), 404, { code: 'not_found' });
      assert.equal(pg.query("SELECT count(*) FROM organizations WHERE id = :'p1'", [org.id]), '0\n');

      const audit = await auditOf(org.id);
      assert.deepEqual(audit.map((a) => a.action), ['delete', 'update', 'create']);
      for (const a of audit) {
        assert.equal(a.actor, 'master');
        assert.equal(a.entity, 'organizations');
        assert.equal(a.entity_id, org.id);
        assert.match(a.at, TIME);
        assert.equal(typeof a.id, 'number');
      }
      const [del, upd, cre] = audit;
      assert.equal(cre.before, null);
      assert.equal(cre.after.name, 'crud-org');
      assert.equal(upd.before.name, 'crud-org');
      assert.equal(upd.after.name, 'crud-org-renamed');
      assert.equal(del.before.name, 'crud-org-renamed');
      assert.equal(del.after, null);
      assert.ok(del.id > upd.id && upd.id > cre.id, 'newest first');
      // one audit entry by its integer id
      assert.deepEqual(await admin.get('audit-log', cre.id), cre);
    });

    it('teams: defaults, update, suspend/resume, filters, delete', T, async () => {
      const org = await admin.create('organizations', { name: 'crud-teams' });
      const team = await admin.create('teams', { org_id: org.id, name: 'alpha' });
      assert.match(team.id, UUID);
      assert.equal(team.org_id, org.id);
      assert.equal(team.status, 'active');
      assert.equal(team.budget_mode, 'consumption_usd');
      assert.equal(team.tokens_per_credit, 10000);
      assert.equal(team.credit_balance, '0.00');
      assert.deepEqual(team.metadata, {});
      const beta = await admin.create('teams', { org_id: org.id, name: 'beta', budget_mode: 'job_based', tokens_per_credit: 500, metadata: { a: 1 } });
      assert.equal(beta.budget_mode, 'job_based');
      assert.equal(beta.tokens_per_credit, 500);
      assert.deepEqual(beta.metadata, { a: 1 });

      const up = await admin.update('teams', team.id, { name: 'alpha2', budget_mode: 'consumption_tokens', tokens_per_credit: 42 });
      assert.equal(up.name, 'alpha2');
      assert.equal(up.budget_mode, 'consumption_tokens');
      assert.equal(up.tokens_per_credit, 42);
      assert.equal(pg.query("SELECT name, budget_mode, tokens_per_credit FROM teams WHERE id = :'p1'", [team.id]), 'alpha2|consumption_tokens|42\n');

      const s = await admin.action('teams', team.id, 'suspend');
      assert.equal(s.status, 'suspended');
      assert.equal(pg.query("SELECT status FROM teams WHERE id = :'p1'", [team.id]), 'suspended\n');
      const suspended = await admin.list('teams', `?org_id=${org.id}&status=suspended`);
      assert.deepEqual(suspended.data.map((t) => t.id), [team.id]);
      const inOrg = await admin.list('teams', `?org_id=${org.id}`);
      assert.deepEqual(inOrg.data.map((t) => t.name), ['alpha2', 'beta']);
      const r = await admin.action('teams', team.id, 'resume');
      assert.equal(r.status, 'active');
      assert.equal(pg.query("SELECT status FROM teams WHERE id = :'p1'", [team.id]), 'active\n');
      assert.deepEqual((await admin.list('teams', `?org_id=${org.id}&status=suspended`)).data, []);

      const audit = await auditOf(team.id);
      assert.deepEqual(audit.map((a) => a.action), ['resume', 'suspend', 'update', 'create']);
      assert.equal(audit[1].before.status, 'active');
      assert.equal(audit[1].after.status, 'suspended');
      assert.ok(audit.every((a) => a.entity === 'teams' && a.actor === 'master'));

      assert.deepEqual(await admin.remove('teams', beta.id), { id: beta.id, deleted: true });
      assertErr(await admin.call('GET', `teams/${beta.id}`), 404, { code: 'not_found' });
      assert.equal(pg.query("SELECT count(*) FROM teams WHERE id = :'p1'", [beta.id]), '0\n');
    });

    it('keys: the key once (tg- + 43), key_prefix, sha256 at rest, update, block/unblock, delete', T, async () => {
      const { team } = await tenant();
      const k = await admin.create('keys', {
        team_id: team.id, alias: 'prod', rpm: 600, tpm: 100000, max_budget: '50', budget_duration: '1mo',
        expires_at: '2031-01-31T00:00:00Z', models: ['mock-1', 'fx-*'], metadata: { env: 'prod' },
      });
      plaintexts.push(k.key);
      assert.match(k.key, VKEY);
      assert.equal(k.key.length, 46);
      assert.equal(k.key_prefix, k.key.slice(0, 11));
      assert.match(k.id, UUID);
      assert.equal(k.team_id, team.id);
      assert.equal(k.alias, 'prod');
      assert.deepEqual(k.models, ['mock-1', 'fx-*']);
      assert.deepEqual(k.access_groups, []);
      assert.equal(k.rpm, 600);
      assert.equal(k.tpm, 100000);
      assert.equal(k.max_budget, '50.00');
      assert.equal(k.budget_duration, '1mo');
      assert.equal(k.expires_at, '2031-01-31T00:00:00+00:00');
      assert.equal(k.blocked, false);
      assert.deepEqual(k.metadata, { env: 'prod' });
      assert.equal(k.key_hash, undefined);

      // stored as its SHA-256 only
      assert.equal(pg.query("SELECT encode(key_hash, 'hex'), key_prefix, max_budget_nano FROM virtual_keys WHERE id = :'p1'", [k.id]),
        `${sha256hex(k.key)}|${k.key.slice(0, 11)}|50000000000\n`);

      const got = await admin.get('keys', k.id);
      assert.equal(got.key, undefined, 'a get never shows the key');
      const { key: _omit, ...rest } = k;
      assert.deepEqual(got, rest);
      const list = await admin.list('keys', `?team_id=${team.id}`);
      assert.equal(list.data.length, 1);
      assert.equal(list.data[0].key, undefined);
      for (const t of transcript.slice(-2)) assert.ok(!t.text.includes(k.key), 'the key is not in a get or a list');

      const k2 = await admin.create('keys', { team_id: team.id, alias: 'dev', max_budget: '0.000000001' });
      plaintexts.push(k2.key);
      assert.notEqual(k2.key, k.key);
      assert.equal(k2.max_budget, '0.000000001');
      assert.equal(k2.rpm, null);
      assert.equal(k2.tpm, null);
      assert.equal(k2.budget_duration, null);
      assert.equal(k2.expires_at, null);

      const up = await admin.update('keys', k.id, { rpm: null, max_budget: '12.5', budget_duration: '7d', access_groups: ['g1'] });
      assert.equal(up.rpm, null);
      assert.equal(up.max_budget, '12.50');
      assert.equal(up.budget_duration, '7d');
      assert.deepEqual(up.access_groups, ['g1']);
      assert.equal(up.key, undefined);
      assert.equal(pg.query("SELECT rpm IS NULL, max_budget_nano, access_groups FROM virtual_keys WHERE id = :'p1'", [k.id]), 't|12500000000|{g1}\n');

      assert.equal((await admin.action('keys', k.id, 'block')).blocked, true);
      assert.equal(pg.query("SELECT blocked FROM virtual_keys WHERE id = :'p1'", [k.id]), 't\n');
      assert.deepEqual((await admin.list('keys', `?team_id=${team.id}&blocked=true`)).data.map((x) => x.id), [k.id]);
      assert.deepEqual((await admin.list('keys', `?team_id=${team.id}&blocked=false`)).data.map((x) => x.id), [k2.id]);
      assert.equal((await admin.action('keys', k.id, 'unblock')).blocked, false);
      assert.deepEqual((await auditOf(k.id)).map((a) => `${a.entity}:${a.action}`),
        ['virtual_keys:unblock', 'virtual_keys:block', 'virtual_keys:update', 'virtual_keys:create']);

      assert.deepEqual(await admin.remove('keys', k2.id), { id: k2.id, deleted: true });
      assert.equal(pg.query("SELECT count(*) FROM virtual_keys WHERE id = :'p1'", [k2.id]), '0\n');
    });

    it('model aliases: normalised routes, prices, access_group filter, delete', T, async () => {
      await admin.create('access-groups', { name: 'crud-grp' });
      const a = await admin.create('model-aliases', {
        name: 'crud-fast', routes: [{ provider: 'mock', model: 'm1' }, { provider: 'up', model: 'gpt-4o', weight: 3, priority: 2 }],
        price_input: '0.30', price_output: '1.20', access_group: 'crud-grp',
      });
      assert.match(a.id, UUID);
      assert.equal(a.name, 'crud-fast');
      assert.deepEqual(a.routes, [
        { provider: 'mock', model: 'm1', weight: 1, priority: 0 },
        { provider: 'up', model: 'gpt-4o', weight: 3, priority: 2 },
      ]);
      assert.equal(a.price_input, '0.30');
      assert.equal(a.price_output, '1.20');
      assert.equal(a.price_cached_input, null);
      assert.equal(a.access_group, 'crud-grp');
      assert.equal(pg.query("SELECT price_input_nano, price_output_nano, price_cached_nano IS NULL FROM model_aliases WHERE id = :'p1'", [a.id]), '300000000|1200000000|t\n');
      assert.deepEqual(await admin.get('model-aliases', a.id), a);

      const b = await admin.create('model-aliases', { name: 'crud-plain', routes: [{ provider: 'mock', model: 'm2' }] });
      assert.equal(b.access_group, null);
      assert.equal(b.price_input, null);
      assert.deepEqual((await admin.list('model-aliases', '?access_group=crud-grp')).data.map((x) => x.id), [a.id]);

      const up = await admin.update('model-aliases', a.id, { price_input: null, price_cached_input: '0.1', routes: [{ provider: 'mock', model: 'm3', priority: -1 }] });
      assert.equal(up.price_input, null);
      assert.equal(up.price_cached_input, '0.10');
      assert.deepEqual(up.routes, [{ provider: 'mock', model: 'm3', weight: 1, priority: -1 }]);

      assert.deepEqual(await admin.remove('model-aliases', b.id), { id: b.id, deleted: true });
      assert.deepEqual((await auditOf(a.id)).map((x) => `${x.entity}:${x.action}`), ['model_aliases:update', 'model_aliases:create']);
    });

    it('access groups: the name is the id; delete clears it from aliases', T, async () => {
      const g = await admin.create('access-groups', { name: 'Grp.a_1-x', description: 'the gold tier' });
      assert.deepEqual(Object.keys(g).sort(), ['created_at', 'description', 'name', 'updated_at']);
      assert.equal(g.name, 'Grp.a_1-x');
      assert.equal(g.description, 'the gold tier');
      const d = await admin.create('access-groups', { name: 'grp-default' });
      assert.equal(d.description, '');
      assert.deepEqual(await admin.get('access-groups', 'Grp.a_1-x'), g);
      assert.ok((await admin.list('access-groups')).data.some((x) => x.name === 'Grp.a_1-x'));
      const up = await admin.update('access-groups', 'Grp.a_1-x', { description: 'changed' });
      assert.equal(up.description, 'changed');
      assert.equal(pg.query("SELECT description FROM access_groups WHERE name = 'Grp.a_1-x'"), 'changed\n');
      const alias = await admin.create('model-aliases', { name: 'grp-alias', routes: [{ provider: 'mock', model: 'm' }], access_group: 'Grp.a_1-x' });
      assert.deepEqual(await admin.remove('access-groups', 'Grp.a_1-x'), { id: 'Grp.a_1-x', deleted: true });
      assertErr(await admin.call('GET', 'access-groups/Grp.a_1-x'), 404, { code: 'not_found' });
      assert.equal((await admin.get('model-aliases', alias.id)).access_group, null);
      assert.deepEqual((await auditOf('Grp.a_1-x')).map((x) => `${x.entity}:${x.action}`),
        ['access_groups:delete', 'access_groups:update', 'access_groups:create']);
    });

    it('credentials: masked, activate switches atomically, active lookup, org listing, update, delete', T, async () => {
      const org = await admin.create('organizations', { name: 'crud-creds' });
      const s1 = 'sk-live-aaaaaaaaaaaaaaaaaaaa1111';
      const s2 = 'sk-live-bbbbbbbbbbbbbbbbbbbb2222';
      plaintexts.push(s1, s2);
      const c1 = await admin.create('credentials', { org_id: org.id, provider: 'up', name: 'main', secret: s1 });
      assert.match(c1.id, UUID);
      assert.deepEqual(Object.keys(c1).sort(),
        ['active', 'created_at', 'created_by', 'id', 'name', 'org_id', 'provider', 'secret_mask', 'updated_at', 'updated_by']);
      assert.equal(c1.secret_mask, 'sk-...1111');
      assert.equal(c1.active, false);
      assert.equal(c1.created_by, 'master');
      assert.equal(c1.updated_by, 'master');
      const c2 = await admin.create('credentials', { org_id: org.id, provider: 'up', name: 'backup', secret: s2, active: true });
      assert.equal(c2.active, true);

      const active = await admin.list('credentials/active', `?org_id=${org.id}&provider=up`);
      assert.equal(active.id, c2.id);
      assert.equal(active.secret, undefined);

      const act = await admin.action('credentials', c1.id, 'activate');
      assert.equal(act.id, c1.id);
      assert.equal(act.active, true);
      assert.equal(pg.query("SELECT id FROM provider_credentials WHERE org_id = :'p1' AND provider = 'up' AND active", [org.id]), `${c1.id}\n`);
      assert.equal((await admin.get('credentials', c2.id)).active, false);
      assert.equal((await admin.list('credentials/active', `?org_id=${org.id}&provider=up`)).id, c1.id);
      const a1 = await auditOf(c1.id);
      const a2 = await auditOf(c2.id);
      assert.equal(a1[0].action, 'activate');
      assert.equal(a1[0].before.active, false);
      assert.equal(a1[0].after.active, true);
      assert.equal(a2[0].action, 'deactivate');
      assert.equal(a2[0].after.active, false);
      // activating the active one again keeps exactly one active
      await admin.action('credentials', c1.id, 'activate');
      assert.equal(pg.query("SELECT count(*) FROM provider_credentials WHERE org_id = :'p1' AND active", [org.id]), '1\n');

      const byOrg = await admin.list(`organizations/${org.id}/credentials`);
      assert.deepEqual(byOrg.data.map((c) => c.id), [c1.id, c2.id]);
      assert.deepEqual((await admin.list('credentials', `?org_id=${org.id}&active=false`)).data.map((c) => c.id), [c2.id]);
      assert.deepEqual((await admin.list('credentials', `?org_id=${org.id}&provider=mock`)).data, []);

      const de = await admin.action('credentials', c1.id, 'deactivate');
      assert.equal(de.active, false);
      assertErr(await admin.call('GET', `credentials/active?org_id=${org.id}&provider=up`), 404, { code: 'not_found' });
      assertErr(await admin.call('GET', `credentials/active?org_id=${org.id}`), 400, { code: 'invalid_query', param: 'provider' });
      assertErr(await admin.call('GET', 'credentials/active?provider=up'), 400, { code: 'invalid_query', param: 'org_id' });

      const encBefore = pg.query("SELECT secret_enc FROM provider_credentials WHERE id = :'p1'", [c2.id]);
      const s3 = 'sk-rotated-cccccccccccccccc3333';
      plaintexts.push(s3);
      const up = await admin.update('credentials', c2.id, { name: 'backup2', secret: s3 });
      assert.equal(up.name, 'backup2');
      assert.equal(up.secret_mask, 'sk-...3333');
      assert.equal(up.secret, undefined);
      const encAfter = pg.query("SELECT secret_enc FROM provider_credentials WHERE id = :'p1'", [c2.id]);
      assert.notEqual(encAfter, encBefore);
      assert.match(encAfter.trim(), /^gAAAAA[A-Za-z0-9_=-]+$/, 'a Fernet token at rest');
      assert.equal((await admin.get('credentials', c2.id, '?include_secret=true')).secret, s3, 'the new secret decrypts');

      assert.deepEqual(await admin.remove('credentials', c2.id), { id: c2.id, deleted: true });
      assertErr(await admin.call('GET', `credentials/${c2.id}`), 404, { code: 'not_found' });
    });

    it('byok: team scope and key scope, one per provider, update, delete', T, async () => {
      const { team, key } = await tenant({});
      const st = 'byok-team-secret-0000001';
      const sk = 'byok-key-secret-00000002';
      plaintexts.push(st, sk);
      const bt = await admin.create('byok', { team_id: team.id, provider: 'mock', secret: st });
      assert.deepEqual(Object.keys(bt).sort(),
        ['created_at', 'created_by', 'id', 'key_id', 'provider', 'secret_mask', 'team_id', 'updated_at', 'updated_by']);
      assert.equal(bt.team_id, team.id);
      assert.equal(bt.key_id, null);
      assert.equal(bt.provider, 'mock');
      assert.equal(bt.secret_mask, 'byo...0001');
      const bk = await admin.create('byok', { team_id: null, key_id: key.id, provider: 'mock', secret: sk });
      assert.equal(bk.key_id, key.id);
      assert.equal(bk.team_id, null);
      assert.equal(bk.secret_mask, 'byo...0002');
      const dup = assertErr(await admin.call('POST', 'byok', { team_id: team.id, provider: 'mock', secret: 'another-secret-value' }), 409,
        { code: 'conflict', param: 'provider' });
      assert.match(dup.message, /team/);
      assertErr(await admin.call('POST', 'byok', { key_id: key.id, provider: 'mock', secret: 'another-secret-value' }), 409,
        { code: 'conflict', param: 'provider' });
      // the other provider is fine
      const bu = await admin.create('byok', { team_id: team.id, provider: 'up', secret: 'byok-up-secret-000000003' });
      plaintexts.push('byok-up-secret-000000003');

      assert.deepEqual((await admin.list('byok', `?team_id=${team.id}`)).data.map((b) => b.id), [bt.id, bu.id]);
      assert.deepEqual((await admin.list('byok', `?key_id=${key.id}`)).data.map((b) => b.id), [bk.id]);
      assert.deepEqual((await admin.list('byok', `?team_id=${team.id}&provider=up`)).data.map((b) => b.id), [bu.id]);
      assert.deepEqual(await admin.get('byok', bk.id), bk);

      const s4 = 'byok-rotated-secret-0004';
      plaintexts.push(s4);
      const up = await admin.update('byok', bt.id, { secret: s4 });
      assert.equal(up.secret_mask, 'byo...0004');
      assert.equal(up.secret, undefined);
      assert.deepEqual(await admin.remove('byok', bu.id), { id: bu.id, deleted: true });
      assert.equal(pg.query("SELECT count(*) FROM byok_keys WHERE team_id = :'p1'", [team.id]), '1\n');
      const audit = await auditOf(bt.id);
      assert.deepEqual(audit.map((a) => `${a.entity}:${a.action}`), ['byok_keys:update', 'byok_keys:create']);
      assert.equal(audit[0].before.secret_mask, 'byo...0001');
      assert.equal(audit[0].after.secret_mask, 'byo...0004');
    });

    it('admin keys: the key once (tga- + 43), sha256 at rest, role filter, block, delete', T, async () => {
      const ak = await admin.create('admin-keys', { name: 'crud-viewer', role: 'viewer' });
      plaintexts.push(ak.key);
      assert.match(ak.key, AKEY);
      assert.equal(ak.key_prefix, ak.key.slice(0, 12));
      assert.deepEqual(Object.keys(ak).sort(), ['blocked', 'created_at', 'created_by', 'id', 'key', 'key_prefix', 'name', 'role', 'updated_at']);
      assert.equal(ak.role, 'viewer');
      assert.equal(ak.blocked, false);
      assert.equal(ak.created_by, 'master');
      assert.equal(pg.query("SELECT encode(key_hash, 'hex') FROM admin_keys WHERE id = :'p1'", [ak.id]), `${sha256hex(ak.key)}\n`);
      const got = await admin.get('admin-keys', ak.id);
      assert.equal(got.key, undefined);
      assert.ok((await admin.list('admin-keys', '?role=viewer')).data.some((x) => x.id === ak.id));
      assert.ok(!(await admin.list('admin-keys', '?role=owner')).data.some((x) => x.id === ak.id));
      const up = await admin.update('admin-keys', ak.id, { blocked: true, role: 'admin' });
      assert.equal(up.blocked, true);
      assert.equal(up.role, 'admin');
      assertErr(await admin.call('POST', 'admin-keys', { name: 'crud-x', role: 'viewer', blocked: true }), 400,
        { code: 'invalid_field', param: 'blocked' });
      assert.deepEqual(await admin.remove('admin-keys', ak.id), { id: ak.id, deleted: true });
      const audit = await auditOf(ak.id);
      assert.deepEqual(audit.map((a) => `${a.entity}:${a.action}`), ['admin_keys:delete', 'admin_keys:update', 'admin_keys:create']);
      assert.equal(audit[2].after.key_prefix, ak.key_prefix);
    });

    it('audit log: filters, newest first, no secret_enc or key_hash anywhere', T, async () => {
      const all = [];
      let offset = 0;
      for (;;) {
        const page = await admin.list('audit-log', `?limit=500&offset=${offset}`);
        all.push(...page.data);
        if (!page.has_more) break;
        offset = page.next_offset;
      }
      assert.ok(all.length > 20);
      assert.equal(String(all.length), pg.query('SELECT count(*) FROM audit_log').trim());
      for (let i = 1; i < all.length; i++) assert.ok(all[i - 1].id > all[i].id, 'newest first');
      for (const a of all) {
        for (const img of [a.before, a.after]) {
          if (img === null) continue;
          assert.equal(img.secret_enc, undefined, `secret_enc in audit ${a.id}`);
          assert.equal(img.key_hash, undefined, `key_hash in audit ${a.id}`);
        }
      }
      const creates = await admin.list('audit-log', '?entity=virtual_keys&action=create&actor=master&limit=500');
      assert.ok(creates.data.length >= 2);
      assert.ok(creates.data.every((a) => a.entity === 'virtual_keys' && a.action === 'create' && a.actor === 'master'));
      assert.ok(creates.data.every((a) => typeof a.after.key_prefix === 'string' && a.after.key_hash === undefined));
      assert.deepEqual((await admin.list('audit-log', '?actor=nobody')).data, []);
      assertErr(await admin.call('GET', 'audit-log?nope=1'), 400, { code: 'invalid_query', param: 'nope' });
      assertErr(await admin.call('GET', 'audit-log/abc'), 404, { code: 'not_found' });
      assertErr(await admin.call('GET', 'audit-log/999999999'), 404, { code: 'not_found' });
    });
  });

  /* ------------------------------------------------------------ pagination */

  describe('pagination', () => {
    it('limit=3 walks 7 teams exactly once in created order', T, async () => {
      const org = await admin.create('organizations', { name: 'pager' });
      const made = [];
      for (let i = 0; i < 7; i++) made.push((await admin.create('teams', { org_id: org.id, name: `p${i}` })).id);
      const seen = [];
      const pages = [];
      let offset = 0;
      for (let guard = 0; guard < 10; guard++) {
        const page = await admin.list('teams', `?org_id=${org.id}&limit=3&offset=${offset}`);
        pages.push([page.data.length, page.has_more, page.next_offset]);
        seen.push(...page.data.map((t) => t.id));
        if (!page.has_more) break;
        offset = page.next_offset;
      }
      assert.deepEqual(pages, [[3, true, 3], [3, true, 6], [1, false, null]]);
      assert.deepEqual(seen, made);
      const whole = await admin.list('teams', `?org_id=${org.id}&limit=7`);
      assert.deepEqual([whole.data.length, whole.has_more, whole.next_offset], [7, false, null]);
      const past = await admin.list('teams', `?org_id=${org.id}&offset=100`);
      assert.deepEqual([past.data, past.has_more, past.next_offset], [[], false, null]);
    });

    it('bad limit, offset or filter: 400 naming the parameter', T, async () => {
      for (const [q, param] of [
        ['limit=0', 'limit'], ['limit=501', 'limit'], ['limit=abc', 'limit'], ['limit=', 'limit'],
        ['offset=-1', 'offset'], ['offset=1.5', 'offset'], ['org_id=nope', 'org_id'], ['status=bogus', 'status'],
        ['color=red', 'color'],
      ]) {
        assertErr(await admin.call('GET', `teams?${q}`), 400, { code: 'invalid_query', param });
      }
      assertErr(await admin.call('GET', 'teams?status=bogus'), 400, { message: /active, suspended/ });
      assertErr(await admin.call('GET', 'keys?blocked=maybe'), 400, { code: 'invalid_query', param: 'blocked' });
      assertErr(await admin.call('GET', 'admin-keys?role=god'), 400, { code: 'invalid_query', param: 'role', message: /owner, admin, viewer/ });
      assert.equal((await admin.list('teams', '?limit=500')).object, 'list');
    });
  });

  /* ------------------------------------------------------------ validation */

  describe('validation', () => {
    let org;
    let team;
    let key;
    before(async () => {
      ({ org, team, key } = await tenant({}));
    });

    it('every field type: 400 invalid_field naming the field', T, async () => {
      const o = () => org.id;
      const t = () => team.id;
      const cases = [
        // [resource, body, param, message]
        ['organizations', {}, 'name', /required/],
        ['organizations', { name: 5 }, 'name', /string/],
        ['organizations', { name: '' }, 'name', /1 to 200/],
        ['organizations', { name: 'x'.repeat(201) }, 'name', /1 to 200/],
        ['organizations', { name: 'ü'.repeat(201) }, 'name', /1 to 200/],
        ['organizations', { name: 'a\u0001b' }, 'name', /control/],
        ['organizations', { name: 'v1', metadata: [1] }, 'metadata', /object/],
        ['organizations', { name: 'v1', metadata: 'x' }, 'metadata', /object/],
        ['organizations', { name: 'v1', color: 'red' }, 'color', /unknown field/],
        ['organizations', { name: null }, 'name', /null/],
        ['teams', { name: 'v' }, 'org_id', /required/],
        ['teams', { org_id: 'not-a-uuid', name: 'v' }, 'org_id', /UUID/],
        ['teams', { org_id: 42, name: 'v' }, 'org_id', /string/],
        ['teams', () => ({ org_id: o(), name: 'v', budget_mode: 'free' }), 'budget_mode', /consumption_usd, consumption_tokens, job_based/],
        ['teams', () => ({ org_id: o(), name: 'v', tokens_per_credit: 0 }), 'tokens_per_credit', /integer/],
        ['teams', () => ({ org_id: o(), name: 'v', tokens_per_credit: '5' }), 'tokens_per_credit', /integer/],
        ['teams', () => ({ org_id: o(), name: 'v', tokens_per_credit: 1.5 }), 'tokens_per_credit', /integer/],
        ['teams', () => ({ org_id: o(), name: 'v', status: 'active' }), 'status', /unknown field/],
        ['keys', () => ({ team_id: t() }), 'alias', /required/],
        ['keys', () => ({ team_id: t(), alias: 'v', rpm: -1 }), 'rpm', /0 to 1000000000/],
        ['keys', () => ({ team_id: t(), alias: 'v', rpm: '10' }), 'rpm', /integer/],
        ['keys', () => ({ team_id: t(), alias: 'v', tpm: 2.5 }), 'tpm', /integer/],
        ['keys', () => ({ team_id: t(), alias: 'v', budget_duration: '2w' }), 'budget_duration', /duration/],
        ['keys', () => ({ team_id: t(), alias: 'v', budget_duration: '0d' }), 'budget_duration', /duration/],
        ['keys', () => ({ team_id: t(), alias: 'v', budget_duration: 7 }), 'budget_duration', /string/],
        ['keys', () => ({ team_id: t(), alias: 'v', expires_at: 'tomorrow' }), 'expires_at', /RFC 3339/],
        ['keys', () => ({ team_id: t(), alias: 'v', expires_at: '2027-01-31' }), 'expires_at', /RFC 3339/],
        ['keys', () => ({ team_id: t(), alias: 'v', max_budget: '-1' }), 'max_budget', /non-negative/],
        ['keys', () => ({ team_id: t(), alias: 'v', max_budget: '0.0000000001' }), 'max_budget', /9 decimals/],
        ['keys', () => ({ team_id: t(), alias: 'v', max_budget: 'ten' }), 'max_budget', /USD/],
        ['keys', () => ({ team_id: t(), alias: 'v', max_budget: 12.5 }), 'max_budget', /string/],
        ['keys', () => ({ team_id: t(), alias: 'v', models: 'mock-1' }), 'models', /array/],
        ['keys', () => ({ team_id: t(), alias: 'v', models: [1] }), 'models', /entry 0/],
        ['keys', () => ({ team_id: t(), alias: 'v', access_groups: [''] }), 'access_groups', /entry 0/],
        ['keys', () => ({ team_id: t(), alias: 'v', blocked: 'yes' }), 'blocked', /true or false/],
        ['keys', () => ({ team_id: t(), alias: 'v', key: 'tg-mine' }), 'key', /unknown field/],
        ['model-aliases', { routes: [{ provider: 'mock', model: 'm' }] }, 'name', /required/],
        ['model-aliases', { name: 'v-alias' }, 'routes', /required/],
        ['model-aliases', { name: 'v-alias', routes: [] }, 'routes', /1 to 16/],
        ['model-aliases', { name: 'v-alias', routes: 'mock' }, 'routes', /1 to 16/],
        ['model-aliases', { name: 'v-alias', routes: Array(17).fill({ provider: 'mock', model: 'm' }) }, 'routes', /1 to 16/],
        ['model-aliases', { name: 'v-alias', routes: [{ provider: 'openai', model: 'm' }] }, 'routes[0]', /no provider called 'openai'/],
        ['model-aliases', { name: 'v-alias', routes: [{ provider: 'mock', model: 'm' }, { provider: 'mock' }] }, 'routes[1]', /model/],
        ['model-aliases', { name: 'v-alias', routes: [{ model: 'm' }] }, 'routes[0]', /provider is required/],
        ['model-aliases', { name: 'v-alias', routes: [{ provider: 'mock', model: 'm', weight: 0 }] }, 'routes[0]', /weight/],
        ['model-aliases', { name: 'v-alias', routes: [{ provider: 'mock', model: 'm', weight: 'x' }] }, 'routes[0]', /weight/],
        ['model-aliases', { name: 'v-alias', routes: [{ provider: 'mock', model: 'm', priority: 1.5 }] }, 'routes[0]', /priority/],
        ['model-aliases', { name: 'v-alias', routes: [{ provider: 'mock', model: 'm', extra: 1 }] }, 'routes[0]', /unknown field 'extra'/],
        ['model-aliases', { name: 'v-alias', routes: ['mock'] }, 'routes[0]', /object/],
        ['model-aliases', { name: 'v-alias', routes: [{ provider: 'mock', model: 'm' }], access_group: 'bad name!' }, 'access_group', /letters/],
        ['model-aliases', { name: 'v-alias', routes: [{ provider: 'mock', model: 'm' }], price_input: '0.0000000001' }, 'price_input', /9 decimals/],
        ['model-aliases', { name: 'v-alias', routes: [{ provider: 'mock', model: 'm' }], price_output: '-0.5' }, 'price_output', /non-negative/],
        ['model-aliases', { name: 'fx-chat', routes: [{ provider: 'mock', model: 'm' }] }, 'name', /configuration already has/],
        ['model-aliases', { name: 'mock-1', routes: [{ provider: 'mock', model: 'm' }] }, 'name', /configuration already has/],
        ['model-aliases', { name: 'mock-cfg', routes: [{ provider: 'mock', model: 'm' }] }, 'name', /configuration already has/],
        ['model-aliases', { name: 'fx/anything', routes: [{ provider: 'mock', model: 'm' }] }, 'name', /configuration already has/],
        ['access-groups', {}, 'name', /required/],
        ['access-groups', { name: '-starts-badly' }, 'name', /letters/],
        ['access-groups', { name: 'a'.repeat(101) }, 'name', /letters/],
        ['access-groups', { name: 'v-grp', description: 'd'.repeat(1001) }, 'description', /0 to 1000/],
        ['credentials', () => ({ org_id: o(), provider: 'openai', name: 'v', secret: 'sk-xxxxxxxxxxxxxxxxx' }), 'provider', /no provider called 'openai'/],
        ['credentials', () => ({ org_id: o(), provider: 'up', name: 'v' }), 'secret', /1 to 8192/],
        ['credentials', () => ({ org_id: o(), provider: 'up', name: 'v', secret: '' }), 'secret', /1 to 8192/],
        ['credentials', () => ({ org_id: o(), provider: 'up', name: 'v', secret: 'x'.repeat(8193) }), 'secret', /1 to 8192/],
        ['credentials', () => ({ org_id: o(), provider: 'up', name: 'v', secret: 12345 }), 'secret', /string/],
        ['credentials', () => ({ org_id: o(), provider: 'up', name: 'v', secret: 'sk-xxxxxxxxxxxxxxxxx', active: 'yes' }), 'active', /true or false/],
        ['credentials', () => ({ org_id: o(), name: 'v', secret: 'sk-xxxxxxxxxxxxxxxxx' }), 'provider', /required/],
        ['byok', () => ({ team_id: t(), provider: 'nope', secret: 'sk-xxxxxxxxxxxxxxxxx' }), 'provider', /no provider called 'nope'/],
        ['byok', () => ({ team_id: t(), key_id: key.id, provider: 'mock', secret: 'sk-xxxxxxxxxxxxxxxxx' }), 'team_id', /exactly one of team_id and key_id/],
        ['byok', { provider: 'mock', secret: 'sk-xxxxxxxxxxxxxxxxx' }, 'team_id', /exactly one of team_id and key_id/],
        ['byok', { team_id: null, key_id: null, provider: 'mock', secret: 'sk-xxxxxxxxxxxxxxxxx' }, 'team_id', /exactly one/],
        ['byok', () => ({ team_id: t(), provider: 'mock' }), 'secret', /1 to 8192/],
        ['byok', { key_id: 'nope', provider: 'mock', secret: 'sk-xxxxxxxxxxxxxxxxx' }, 'key_id', /UUID/],
        ['admin-keys', { name: 'v-ak', role: 'god' }, 'role', /owner, admin, viewer/],
        ['admin-keys', { role: 'viewer' }, 'name', /required/],
      ];
      const before = pg.query('SELECT (SELECT count(*) FROM organizations) + (SELECT count(*) FROM teams) + (SELECT count(*) FROM audit_log)');
      for (const [res, b, param, message] of cases) {
        const body = typeof b === 'function' ? b() : b;
        const r = await admin.call('POST', res, body);
        const e = assertErr(r, 400, { code: 'invalid_field', param });
        assert.match(e.message, message, `${res} ${JSON.stringify(body).slice(0, 200)}: ${e.message}`);
        assert.ok(e.message.startsWith(`${param}: `), `the message names the field: ${e.message}`);
      }
      assert.equal(pg.query('SELECT (SELECT count(*) FROM organizations) + (SELECT count(*) FROM teams) + (SELECT count(*) FROM audit_log)'), before,
        'a refused request writes nothing');
    });

    it('PATCH: fixed fields, unknown fields, no field, bad values', T, async () => {
      const cred = await admin.create('credentials', { org_id: org.id, provider: 'up', name: 'fixed', secret: 'sk-fixed-secret-000000' });
      plaintexts.push('sk-fixed-secret-000000');
      const byok = await admin.create('byok', { team_id: team.id, provider: 'up', secret: 'byok-fixed-secret-00000' });
      plaintexts.push('byok-fixed-secret-00000');
      await admin.create('access-groups', { name: 'fixed-grp' });
      const alias = await admin.create('model-aliases', { name: 'fixed-alias', routes: [{ provider: 'mock', model: 'm' }] });
      const other = await admin.create('organizations', { name: 'fixed-other' });
      for (const [path, body, param, message] of [
        [`teams/${team.id}`, { org_id: other.id }, 'org_id', /cannot be changed/],
        [`keys/${key.id}`, { team_id: team.id }, 'team_id', /cannot be changed/],
        [`credentials/${cred.id}`, { provider: 'mock' }, 'provider', /cannot be changed/],
        [`credentials/${cred.id}`, { org_id: other.id }, 'org_id', /cannot be changed/],
        [`credentials/${cred.id}`, { active: true }, 'active', /activate/],
        [`byok/${byok.id}`, { team_id: team.id }, 'team_id', /cannot be changed/],
        [`byok/${byok.id}`, { provider: 'mock' }, 'provider', /cannot be changed/],
        ['access-groups/fixed-grp', { name: 'other-grp' }, 'name', /cannot be changed/],
        [`teams/${team.id}`, {}, 'body', /no field/],
        [`credentials/${cred.id}`, {}, 'body', /no field/],
        [`teams/${team.id}`, { colour: 'red' }, 'colour', /unknown field/],
        [`keys/${key.id}`, { key: 'tg-x' }, 'key', /unknown field/],
        [`keys/${key.id}`, { rpm: 'fast' }, 'rpm', /integer/],
        [`keys/${key.id}`, { alias: null }, 'alias', /null/],
        [`keys/${key.id}`, { blocked: null }, 'blocked', /null/],
        [`teams/${team.id}`, { budget_mode: 'x' }, 'budget_mode', /consumption_usd/],
        [`credentials/${cred.id}`, { secret: '' }, 'secret', /1 to 8192/],
        [`model-aliases/${alias.id}`, { routes: [{ provider: 'zzz', model: 'm' }] }, 'routes[0]', /zzz/],
        [`model-aliases/${alias.id}`, { name: 'fx-chat' }, 'name', /configuration already has/],
      ]) {
        const e = assertErr(await admin.call('PATCH', path, body), 400, { code: 'invalid_field', param });
        assert.match(e.message, message, `PATCH ${path} ${JSON.stringify(body)}: ${e.message}`);
      }
      assert.equal(pg.query("SELECT org_id FROM teams WHERE id = :'p1'", [team.id]), `${org.id}\n`);
      assert.equal(pg.query("SELECT active FROM provider_credentials WHERE id = :'p1'", [cred.id]), 'f\n');
      assert.equal((await admin.get('model-aliases', alias.id)).name, 'fixed-alias');
    });

    it('malformed JSON and non-object bodies: 400 invalid_json', T, async () => {
      for (const [method, path] of [['POST', 'organizations'], ['PATCH', `teams/${team.id}`]]) {
        for (const text of ['{"name":', '[1,2]', '"acme"', '42', 'null', '', '{"name":"a","name":"b"}', 'name=acme']) {
          assertErr(await admin.call(method, path, text), 400, { code: 'invalid_json' });
        }
      }
    });

    it('unknown references: 400 naming the field ("no such ...")', T, async () => {
      assertErr(await admin.call('POST', 'teams', { org_id: NO_SUCH, name: 'orphan' }), 400,
        { code: 'invalid_field', param: 'org_id', message: /no such organization/ });
      assertErr(await admin.call('POST', 'keys', { team_id: NO_SUCH, alias: 'orphan' }), 400,
        { code: 'invalid_field', param: 'team_id', message: /no such team/ });
      assertErr(await admin.call('POST', 'credentials', { org_id: NO_SUCH, provider: 'up', name: 'orphan', secret: 'sk-orphan-00000000000' }), 400,
        { code: 'invalid_field', param: 'org_id', message: /no such organization/ });
      assertErr(await admin.call('POST', 'model-aliases', { name: 'orphan-alias', routes: [{ provider: 'mock', model: 'm' }], access_group: 'no-such-group' }), 400,
        { code: 'invalid_field', param: 'access_group', message: /no such access group/ });
      assertErr(await admin.call('POST', 'byok', { key_id: NO_SUCH, provider: 'mock', secret: 'sk-orphan-00000000000' }), 400,
        { code: 'invalid_field', param: 'key_id', message: /no such key/ });
      assertErr(await admin.call('POST', 'byok', { team_id: NO_SUCH, provider: 'mock', secret: 'sk-orphan-00000000000' }), 400,
        { code: 'invalid_field', param: 'team_id', message: /no such team/ });
      assert.equal(pg.query("SELECT count(*) FROM teams WHERE name = 'orphan'"), '0\n');
    });
  });

  /* ------------------------------------------------------------ conflicts */

  describe('conflicts', () => {
    it('duplicate names: 409 conflict naming the field; the same name elsewhere is fine', T, async () => {
      const o1 = await admin.create('organizations', { name: 'dup-org' });
      const o2 = await admin.create('organizations', { name: 'dup-org-2' });
      assertErr(await admin.call('POST', 'organizations', { name: 'dup-org' }), 409, { code: 'conflict', param: 'name', message: /organization/ });
      assertErr(await admin.call('PATCH', `organizations/${o2.id}`, { name: 'dup-org' }), 409, { code: 'conflict', param: 'name' });

      const t1 = await admin.create('teams', { org_id: o1.id, name: 'same' });
      assertErr(await admin.call('POST', 'teams', { org_id: o1.id, name: 'same' }), 409, { code: 'conflict', param: 'name', message: /team/ });
      const t2 = await admin.create('teams', { org_id: o2.id, name: 'same' });
      assert.equal(t2.name, 'same');

      const k = await admin.create('keys', { team_id: t1.id, alias: 'k' });
      plaintexts.push(k.key);
      const dupKey = await admin.call('POST', 'keys', { team_id: t1.id, alias: 'k' });
      assertErr(dupKey, 409, { code: 'conflict', param: 'alias' });
      const k2 = await admin.create('keys', { team_id: t2.id, alias: 'k' });
      plaintexts.push(k2.key);

      await admin.create('model-aliases', { name: 'dup-alias', routes: [{ provider: 'mock', model: 'm' }] });
      assertErr(await admin.call('POST', 'model-aliases', { name: 'dup-alias', routes: [{ provider: 'mock', model: 'x' }] }), 409, { code: 'conflict', param: 'name' });
      await admin.create('access-groups', { name: 'dup-grp' });
      assertErr(await admin.call('POST', 'access-groups', { name: 'dup-grp' }), 409, { code: 'conflict', param: 'name' });

      await admin.create('credentials', { org_id: o1.id, provider: 'up', name: 'c', secret: 'sk-dup-cred-000000001' });
      plaintexts.push('sk-dup-cred-000000001');
      assertErr(await admin.call('POST', 'credentials', { org_id: o1.id, provider: 'up', name: 'c', secret: 'sk-dup-cred-000000002' }), 409,
        { code: 'conflict', param: 'name' });
      await admin.create('credentials', { org_id: o1.id, provider: 'mock', name: 'c', secret: 'sk-dup-cred-000000003' });
      await admin.create('credentials', { org_id: o2.id, provider: 'up', name: 'c', secret: 'sk-dup-cred-000000004' });
      plaintexts.push('sk-dup-cred-000000003', 'sk-dup-cred-000000004');

      const ak = await admin.create('admin-keys', { name: 'dup-ak', role: 'viewer' });
      plaintexts.push(ak.key);
      assertErr(await admin.call('POST', 'admin-keys', { name: 'dup-ak', role: 'admin' }), 409, { code: 'conflict', param: 'name' });
      // no audit row for a refused write
      assert.equal(pg.query("SELECT count(*) FROM audit_log WHERE after->>'name' = 'dup-org'"), '1\n');
    });

    it('a second active credential at create: 409 param active; exactly one stays active', T, async () => {
      const org = await admin.create('organizations', { name: 'two-active' });
      const a = await admin.create('credentials', { org_id: org.id, provider: 'up', name: 'a', secret: 'sk-active-a-0000000001', active: true });
      plaintexts.push('sk-active-a-0000000001', 'sk-active-b-0000000002');
      assertErr(await admin.call('POST', 'credentials', { org_id: org.id, provider: 'up', name: 'b', secret: 'sk-active-b-0000000002', active: true }), 409,
        { code: 'conflict', param: 'active', message: /activate/ });
      assert.equal(pg.query("SELECT string_agg(id::text, ',') FROM provider_credentials WHERE org_id = :'p1' AND active", [org.id]), `${a.id}\n`);
      assert.equal(pg.query("SELECT count(*) FROM provider_credentials WHERE org_id = :'p1'", [org.id]), '1\n');
      // another provider may have its own active one
      const m = await admin.create('credentials', { org_id: org.id, provider: 'mock', name: 'b', secret: 'sk-active-b-0000000002', active: true });
      assert.equal(m.active, true);
      // switching back and forth keeps exactly one active for 'up'
      const b = await admin.create('credentials', { org_id: org.id, provider: 'up', name: 'b', secret: 'sk-active-b-0000000002' });
      for (const id of [b.id, a.id, b.id]) {
        await admin.action('credentials', id, 'activate');
        assert.equal(pg.query("SELECT string_agg(id::text, ',') FROM provider_credentials WHERE org_id = :'p1' AND provider = 'up' AND active", [org.id]), `${id}\n`);
      }
      assert.equal(pg.query("SELECT active FROM provider_credentials WHERE id = :'p1'", [m.id]), 't\n', 'the other provider is untouched');
    });

    it('deleting an organization that has teams: 409; its credentials go with it', T, async () => {
      const { org, team } = await tenant();
      const cred = await admin.create('credentials', { org_id: org.id, provider: 'up', name: 'gone', secret: 'sk-goes-with-org-00001' });
      plaintexts.push('sk-goes-with-org-00001');
      assertErr(await admin.call('DELETE', `organizations/${org.id}`), 409, { code: 'conflict', message: /teams/ });
      assert.equal(pg.query("SELECT count(*) FROM organizations WHERE id = :'p1'", [org.id]), '1\n');
      await admin.remove('teams', team.id);
      await admin.remove('organizations', org.id);
      assert.equal(pg.query("SELECT count(*) FROM provider_credentials WHERE id = :'p1'", [cred.id]), '0\n');
    });
  });

  /* ------------------------------------------------------------ 404 / 405 */

  describe('404 and 405', () => {
    it('404: unknown id, non-UUID id, unknown resource, unknown action', T, async () => {
      for (const [res, patch] of [
        ['organizations', { name: 'zz' }], ['teams', { name: 'zz' }], ['keys', { alias: 'zz' }], ['model-aliases', { name: 'zz' }],
        ['credentials', { name: 'zz' }], ['byok', { secret: 'zz-secret-zzzzzz' }], ['admin-keys', { name: 'zz' }],
      ]) {
        assertErr(await admin.call('GET', `${res}/${NO_SUCH}`), 404, { code: 'not_found' });
        assertErr(await admin.call('PATCH', `${res}/${NO_SUCH}`, patch), 404, { code: 'not_found' });
        assertErr(await admin.call('DELETE', `${res}/${NO_SUCH}`), 404, { code: 'not_found' });
        assertErr(await admin.call('GET', `${res}/not-a-uuid`), 404, { code: 'not_found' });
      }
      assertErr(await admin.call('GET', 'access-groups/no-such-group'), 404, { code: 'not_found' });
      assertErr(await admin.call('DELETE', 'access-groups/no-such-group'), 404, { code: 'not_found' });
      assertErr(await admin.call('POST', `teams/${NO_SUCH}/suspend`), 404, { code: 'not_found' });
      assertErr(await admin.call('POST', `keys/${NO_SUCH}/block`), 404, { code: 'not_found' });
      assertErr(await admin.call('POST', `credentials/${NO_SUCH}/activate`), 404, { code: 'not_found' });
      assertErr(await admin.call('GET', `credentials/${NO_SUCH}?include_secret=true`), 404, { code: 'not_found' });
      assertErr(await admin.call('GET', 'nope'), 404, { code: 'unknown_url' });
      assertErr(await admin.call('GET', 'nope/1'), 404, { code: 'unknown_url' });
      const { team } = await tenant();
      assertErr(await admin.call('POST', `teams/${team.id}/explode`), 404, { code: 'unknown_url' });
      assertErr(await admin.call('POST', `teams/${team.id}/block`), 404, { code: 'unknown_url' });
      assertErr(await admin.call('GET', `teams/${team.id}/a/b`), 404, { code: 'unknown_url' });
      assertErr(await admin.call('GET', ''), 404, { code: 'unknown_url' });
      assert.equal(pg.query("SELECT status FROM teams WHERE id = :'p1'", [team.id]), 'active\n');
    });

    it('405 with Allow', T, async () => {
      const { team } = await tenant();
      for (const [method, path, allow] of [
        ['PUT', 'teams', 'GET, POST'],
        ['DELETE', 'teams', 'GET, POST'],
        ['POST', `teams/${team.id}`, 'GET, PATCH, DELETE'],
        ['PUT', `teams/${team.id}`, 'GET, PATCH, DELETE'],
        ['GET', `teams/${team.id}/suspend`, 'POST'],
        ['DELETE', 'audit-log', 'GET'],
        ['POST', 'audit-log', 'GET'],
        ['DELETE', 'audit-log/1', 'GET'],
        ['PATCH', 'audit-log/1', 'GET'],
        ['POST', 'credentials/active', 'GET'],
        ['POST', `organizations/${team.org_id}/credentials`, 'GET'],
      ]) {
        const r = await admin.call(method, path, method === 'GET' || method === 'DELETE' ? undefined : {});
        assertErr(r, 405, { code: 'method_not_allowed' });
        assert.equal(r.headers.get('allow'), allow, `${method} ${path}`);
      }
    });
  });

  /* ------------------------------------------------------------ roles */

  describe('roles', () => {
    let viewer;
    let adm;
    let owner;
    let keys;
    let cred;
    let team;
    before(async () => {
      keys = {};
      for (const role of ['viewer', 'admin', 'owner']) {
        const ak = await admin.create('admin-keys', { name: `role-${role}`, role });
        plaintexts.push(ak.key);
        keys[role] = ak;
      }
      viewer = client(keys.viewer.key);
      adm = client(keys.admin.key);
      owner = client(keys.owner.key);
      ({ team } = await tenant());
      cred = await admin.create('credentials', { org_id: team.org_id, provider: 'up', name: 'role-cred', secret: 'sk-role-secret-00000009' });
      plaintexts.push('sk-role-secret-00000009');
    });

    it('viewer reads everything, writes nothing (403 forbidden)', T, async () => {
      for (const res of ['organizations', 'teams', 'keys', 'model-aliases', 'access-groups', 'credentials', 'byok', 'admin-keys', 'audit-log']) {
        assert.equal((await viewer.list(res)).object, 'list', res);
      }
      assert.equal((await viewer.get('teams', team.id)).id, team.id);
      assert.equal((await viewer.get('credentials', cred.id)).secret, undefined);
      const count = pg.query('SELECT count(*) FROM audit_log');
      for (const [method, path, body] of [
        ['POST', 'organizations', { name: 'viewer-org' }],
        ['POST', 'teams', { org_id: team.org_id, name: 'viewer-team' }],
        ['PATCH', `teams/${team.id}`, { name: 'viewer-renamed' }],
        ['DELETE', `teams/${team.id}`],
        ['POST', `teams/${team.id}/suspend`],
        ['POST', `credentials/${cred.id}/activate`],
        ['POST', 'admin-keys', { name: 'viewer-ak', role: 'owner' }],
      ]) {
        assertErr(await viewer.call(method, path, body), 403, { code: 'forbidden', message: /needs the (admin|owner) role \(this key is viewer\)/ });
      }
      assertErr(await viewer.call('POST', 'organizations', { name: 'x' }), 403, { message: /^This needs the admin role \(this key is viewer\)\.$/ });
      assertErr(await viewer.call('GET', `credentials/${cred.id}?include_secret=true`), 403, { code: 'forbidden', message: /owner/ });
      assert.equal(pg.query('SELECT count(*) FROM audit_log'), count, 'nothing written');
      assert.equal(pg.query("SELECT name, status FROM teams WHERE id = :'p1'", [team.id]), `${team.name}|active\n`);
    });

    it('admin writes tenants but not admin keys or secrets; actor admin:<name>', T, async () => {
      const t = await adm.create('teams', { org_id: team.org_id, name: 'by-admin' });
      const k = await adm.create('keys', { team_id: t.id, alias: 'by-admin' });
      plaintexts.push(k.key);
      assert.match(k.key, VKEY);
      await adm.update('teams', t.id, { name: 'by-admin-2' });
      await adm.action('keys', k.id, 'block');
      const c = await adm.create('credentials', { org_id: team.org_id, provider: 'mock', name: 'by-admin', secret: 'sk-by-admin-000000007' });
      plaintexts.push('sk-by-admin-000000007');
      assert.equal(c.created_by, 'admin:role-admin');
      assert.equal(c.updated_by, 'admin:role-admin');
      assert.ok((await adm.list('admin-keys')).data.length >= 3, 'admin may read admin keys');
      assert.equal((await adm.get('credentials', cred.id)).secret, undefined);
      for (const [method, path, body] of [
        ['POST', 'admin-keys', { name: 'admin-made', role: 'owner' }],
        ['PATCH', `admin-keys/${keys.viewer.id}`, { role: 'owner' }],
        ['PATCH', `admin-keys/${keys.admin.id}`, { role: 'owner' }],
        ['DELETE', `admin-keys/${keys.viewer.id}`],
        ['GET', `credentials/${cred.id}?include_secret=true`],
      ]) {
        assertErr(await adm.call(method, path, body), 403, { code: 'forbidden', message: /^This needs the owner role \(this key is admin\)\.$/ });
      }
      assert.equal(pg.query("SELECT role FROM admin_keys WHERE id = :'p1'", [keys.admin.id]), 'admin\n');
      const audit = await auditOf(t.id);
      assert.deepEqual(audit.map((a) => `${a.actor}:${a.action}`), ['admin:role-admin:update', 'admin:role-admin:create']);
      assert.deepEqual((await auditOf(k.id)).map((a) => a.actor), ['admin:role-admin', 'admin:role-admin']);
      const byActor = await admin.list('audit-log', `?actor=${encodeURIComponent('admin:role-admin')}&limit=500`);
      assert.ok(byActor.data.length >= 5 && byActor.data.every((a) => a.actor === 'admin:role-admin'));
    });

    it('owner does everything, including admin keys and include_secret', T, async () => {
      const ak = await owner.create('admin-keys', { name: 'owner-made', role: 'viewer' });
      plaintexts.push(ak.key);
      assert.equal(ak.created_by, 'admin:role-owner');
      await owner.update('admin-keys', ak.id, { role: 'admin' });
      await owner.remove('admin-keys', ak.id);
      const s = await owner.get('credentials', cred.id, '?include_secret=true');
      assert.equal(s.secret, 'sk-role-secret-00000009');
      const reads = (await auditOf(cred.id)).filter((a) => a.action === 'read_secret');
      assert.deepEqual(reads.map((a) => [a.actor, a.entity, a.before, a.after]), [['admin:role-owner', 'provider_credentials', null, null]]);
      const t = await owner.create('teams', { org_id: team.org_id, name: 'by-owner' });
      await owner.remove('teams', t.id);
    });

    it('401 invalid_admin_key: no key, unknown key, a virtual key, blocked or deleted admin key', T, async () => {
      const r0 = await fetch(gw.url('/admin/teams'));
      assert.equal(r0.status, 401);
      const e0 = (await r0.json()).error;
      assert.deepEqual([e0.type, e0.code], ['authentication_error', 'invalid_admin_key']);
      assertErr(await client('tga-not-a-real-key').call('GET', 'teams'), 401, { code: 'invalid_admin_key' });
      assertErr(await client('').call('GET', 'teams'), 401, { code: 'invalid_admin_key' });
      const { secret } = await tenant({});
      assertErr(await client(secret).call('GET', 'teams'), 401, { code: 'invalid_admin_key' });
      // x-api-key works too
      const rx = await fetch(gw.url('/admin/teams?limit=1'), { headers: { 'x-api-key': MASTER_KEY } });
      assert.equal(rx.status, 200);

      const ak = await admin.create('admin-keys', { name: 'to-block', role: 'owner' });
      plaintexts.push(ak.key);
      const c = client(ak.key);
      assert.equal((await c.call('GET', 'teams')).status, 200);
      await admin.update('admin-keys', ak.id, { blocked: true });
      assertErr(await c.call('GET', 'teams'), 401, { code: 'invalid_admin_key' });
      await admin.update('admin-keys', ak.id, { blocked: false });
      assert.equal((await c.call('GET', 'teams')).status, 200);
      await admin.remove('admin-keys', ak.id);
      assertErr(await c.call('GET', 'teams'), 401, { code: 'invalid_admin_key' });
    });

    it('the master key acts as owner, named master', T, async () => {
      const o = await admin.create('organizations', { name: 'by-master' });
      const [a] = await auditOf(o.id);
      assert.deepEqual([a.actor, a.action, a.entity], ['master', 'create', 'organizations']);
      const ak = await admin.create('admin-keys', { name: 'by-master-ak', role: 'viewer' });
      plaintexts.push(ak.key);
      assert.equal(ak.created_by, 'master');
    });
  });

  /* ------------------------------------------------------------ secrets */

  describe('secrets', () => {
    it('a credential secret: masked, only an owner include_secret shows it, and that read is audited', T, async () => {
      const org = await admin.create('organizations', { name: 'secret-org' });
      const secret = 'sk-proj-SECRETSECRETSECRET-wxyz';
      plaintexts.push(secret);
      const c = await admin.create('credentials', { org_id: org.id, provider: 'up', name: 's', secret });
      assert.equal(c.secret_mask, 'sk-...wxyz');
      assert.match(c.secret_mask, /^.{3}\.\.\..{4}$/);
      const short = await admin.create('credentials', { org_id: org.id, provider: 'mock', name: 'short', secret: 'abc' });
      assert.equal(short.secret_mask, '...', 'a short secret shows nothing of itself');
      // non-ASCII secrets: the mask is whole characters (the column is text)
      const cyr = 'ключ-секрет-значение';
      const emoji = 'sk-abcdefghijkl\u{1F600}';
      plaintexts.push(cyr, emoji);
      const c3 = await admin.create('credentials', { org_id: org.id, provider: 'mock', name: 'cyrillic', secret: cyr });
      assert.equal(c3.secret_mask, 'клю...ение');
      assert.equal((await admin.get('credentials', c3.id, '?include_secret=true')).secret, cyr);
      const c4 = await admin.create('credentials', { org_id: org.id, provider: 'mock', name: 'emoji', secret: emoji });
      assert.equal(c4.secret_mask, 'sk-...jkl\u{1F600}');
      assert.equal((await admin.create('credentials', { org_id: org.id, provider: 'mock', name: 'short-e', secret: 'é'.repeat(11) })).secret_mask, '...');
      const before = pg.query("SELECT count(*) FROM audit_log WHERE action = 'read_secret'");
      const got = await admin.get('credentials', c.id, '?include_secret=true');
      assert.equal(got.secret, secret);
      assert.equal(got.id, c.id);
      assert.equal(got.secret_mask, 'sk-...wxyz');
      assert.equal(Number(pg.query("SELECT count(*) FROM audit_log WHERE action = 'read_secret'")), Number(before) + 1);
      const [read] = (await admin.list('audit-log', `?action=read_secret&entity_id=${c.id}`)).data;
      assert.deepEqual([read.actor, read.entity, read.entity_id, read.before, read.after], ['master', 'provider_credentials', c.id, null, null]);
      // include_secret=false or another value: no secret, no audit row
      assert.equal((await admin.get('credentials', c.id, '?include_secret=false')).secret, undefined);
      assert.equal((await admin.get('credentials', c.id, '?include_secret=1')).secret, undefined);
      assert.equal(Number(pg.query("SELECT count(*) FROM audit_log WHERE action = 'read_secret'")), Number(before) + 1);
      // not in the database in the clear
      assert.equal(pg.query("SELECT count(*) FROM provider_credentials WHERE secret_enc LIKE '%' || :'p1' || '%'", [secret]), '0\n');
    });
  });

  /* ------------------------------------------------------------ request path */

  describe('the request path uses what the admin API made, at once', () => {
    it('a new key works right after its create; blocked 401; unblocked works; deleted 401', T, async () => {
      const { key, secret } = await tenant({});
      const ok = await chat(secret);
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.body.object, 'chat.completion');
      await admin.action('keys', key.id, 'block');
      const blocked = await chat(secret);
      assert.equal(blocked.status, 401, blocked.text);
      assert.equal(blocked.body.error.code, 'invalid_api_key');
      assert.match(blocked.body.error.message, /blocked/);
      await admin.action('keys', key.id, 'unblock');
      assert.equal((await chat(secret)).status, 200);
      await admin.update('keys', key.id, { blocked: true });
      assert.equal((await chat(secret)).status, 401, 'PATCH blocked:true too');
      await admin.update('keys', key.id, { blocked: false });
      assert.equal((await chat(secret)).status, 200);
      await admin.remove('keys', key.id);
      const gone = await chat(secret);
      assert.equal(gone.status, 401);
      assert.equal(gone.body.error.code, 'invalid_api_key');
    });

    it('expires_at: past 401, future 200, moved into the past 401', T, async () => {
      const past = await tenant({ expires_at: '2020-01-01T00:00:00Z' });
      const r = await chat(past.secret);
      assert.equal(r.status, 401, r.text);
      assert.match(r.body.error.message, /expired/);
      const future = await tenant({ expires_at: '2099-01-01T00:00:00Z' });
      assert.equal((await chat(future.secret)).status, 200);
      await admin.update('keys', future.key.id, { expires_at: '2001-01-01T00:00:00+02:00' });
      assert.equal((await chat(future.secret)).status, 401);
      await admin.update('keys', future.key.id, { expires_at: null });
      assert.equal((await chat(future.secret)).status, 200);
    });

    it('a suspended team: 403 team_suspended; resumed: 200; a deleted team: 401', T, async () => {
      const { team, secret } = await tenant({});
      assert.equal((await chat(secret)).status, 200);
      await admin.action('teams', team.id, 'suspend');
      const r = await chat(secret);
      assert.equal(r.status, 403, r.text);
      assert.equal(r.body.error.code, 'team_suspended');
      assert.equal(r.body.error.type, 'permission_error');
      await admin.action('teams', team.id, 'resume');
      assert.equal((await chat(secret)).status, 200);
      await admin.remove('teams', team.id);
      assert.equal((await chat(secret)).status, 401, 'the key went with its team');
    });

    it('models and access groups decide which models a key may use and see', T, async () => {
      await admin.create('access-groups', { name: 'gold' });
      const alias = await admin.create('model-aliases', { name: 'gold-chat', routes: [{ provider: 'mock', model: 'mock-gold' }], access_group: 'gold' });
      const fx = await tenant({ models: ['fx-*'] });
      const r = await chat(fx.secret, 'mock-1');
      assert.equal(r.status, 403, r.text);
      assert.equal(r.body.error.code, 'model_not_allowed');
      assert.equal((await chat(fx.secret, 'gold-chat')).status, 403);
      assert.deepEqual(await modelIds(fx.secret), ['fx-chat'], "'fx-*' matches fx-chat, not fx/*");

      const gold = await tenant({ access_groups: ['gold'] });
      const rid = newRequestId('adm');
      const ok = await chat(gold.secret, 'gold-chat', { 'x-request-id': rid });
      assert.equal(ok.status, 200, ok.text);
      const line = await gw.accessLogFor(rid);
      assert.deepEqual([line.model, line.provider, line.provider_model, line.status], ['gold-chat', 'mock', 'mock-gold', 200]);
      // the answer carries the provider's model, as for a config alias (relayed as answered)
      assert.equal(ok.body.model, 'mock-gold');
      const viaCfg = await chat(KEY, 'mock-cfg');
      assert.equal(viaCfg.status, 200, viaCfg.text);
      assert.equal(viaCfg.body.model, 'mock-inner');
      assert.equal((await chat(gold.secret, 'mock-1')).status, 403, 'a config model has no access group');
      assert.deepEqual(await modelIds(gold.secret), ['gold-chat']);

      const plain = await tenant({ models: ['mock-1'] });
      assert.equal((await chat(plain.secret, 'mock-1')).status, 200);
      const no = await chat(plain.secret, 'gold-chat');
      assert.equal(no.status, 403, no.text);
      assert.equal(no.body.error.code, 'model_not_allowed');
      assert.deepEqual(await modelIds(plain.secret), ['mock-1']);

      const all = await tenant({});
      assert.ok((await modelIds(all.secret)).includes('gold-chat'), 'an unrestricted key sees the database alias');
      assert.equal((await chat(all.secret, 'gold-chat')).status, 200);

      // the key's list changes at once
      await admin.update('keys', plain.key.id, { access_groups: ['gold'] });
      assert.equal((await chat(plain.secret, 'gold-chat')).status, 200);
      assert.deepEqual(await modelIds(plain.secret), ['mock-1', 'gold-chat']);
      // the alias leaves the group: only unrestricted keys may use it
      await admin.update('model-aliases', alias.id, { access_group: null });
      assert.equal((await chat(gold.secret, 'gold-chat')).status, 403);
      assert.deepEqual(await modelIds(gold.secret), []);
      // deleted: unknown at once
      await admin.remove('model-aliases', alias.id);
      const gone = await chat(all.secret, 'gold-chat');
      assert.equal(gone.status, 404, gone.text);
      assert.equal(gone.body.error.code, 'model_not_found');
    });

    it('renaming a database alias, or deleting its access group, takes effect at once', T, async () => {
      await admin.create('access-groups', { name: 'silver' });
      const alias = await admin.create('model-aliases', { name: 'silver-old', routes: [{ provider: 'mock', model: 'mock-silver' }], access_group: 'silver' });
      const { secret } = await tenant({ access_groups: ['silver'] });
      assert.equal((await chat(secret, 'silver-old')).status, 200);
      await admin.update('model-aliases', alias.id, { name: 'silver-new' });
      const old = await chat(secret, 'silver-old');
      assert.equal(old.status, 404, `the old name is gone at once: ${old.text}`);
      assert.equal(old.body.error.code, 'model_not_found');
      assert.equal((await chat(secret, 'silver-new')).status, 200);
      assert.deepEqual(await modelIds(secret), ['silver-new']);
      // the group goes: the alias has no group any more, so this key may not use it
      await admin.remove('access-groups', 'silver');
      assert.equal((await admin.get('model-aliases', alias.id)).access_group, null);
      const r = await chat(secret, 'silver-new');
      assert.equal(r.status, 403, `the key's group no longer covers the alias at once: ${r.text}`);
      assert.deepEqual(await modelIds(secret), []);
      // the same a few times over: the answer to the DELETE must come after
      // this instance's cache has the aliases without their group (a race
      // with NOTIFY otherwise)
      const groups = Array.from({ length: 12 }, (_, i) => `race-${i}`);
      const racer = await tenant({ access_groups: groups });
      for (const g of groups) {
        await admin.create('access-groups', { name: g });
        await admin.create('model-aliases', { name: `alias-${g}`, routes: [{ provider: 'mock', model: 'm' }], access_group: g });
      }
      for (const g of groups) {
        assert.equal((await chat(racer.secret, `alias-${g}`)).status, 200);
        await admin.remove('access-groups', g);
        assert.equal((await chat(racer.secret, `alias-${g}`)).status, 403, `alias-${g} right after its group was deleted`);
      }
    });

    it('an admin key\'s new role applies at once', T, async () => {
      const ak = await admin.create('admin-keys', { name: 'promoted', role: 'viewer' });
      plaintexts.push(ak.key);
      const c = client(ak.key);
      assertErr(await c.call('POST', 'organizations', { name: 'by-promoted' }), 403, { code: 'forbidden' });
      await admin.update('admin-keys', ak.id, { role: 'admin' });
      assert.equal((await c.create('organizations', { name: 'by-promoted' })).name, 'by-promoted');
      await admin.update('admin-keys', ak.id, { role: 'viewer' });
      assertErr(await c.call('POST', 'organizations', { name: 'by-promoted-2' }), 403, { code: 'forbidden' });
    });

    it('the credential a call uses: key BYOK, team BYOK, the org\'s active one, the config\'s', T, async () => {
      const { org, team, key, secret } = await tenant({});
      const credentialOf = async () => {
        const id = newRequestId('adm');
        const r = await chat(secret, 'mock-1', { 'x-request-id': id });
        assert.equal(r.status, 200, r.text);
        const line = await gw.accessLogFor(id);
        assert.equal(line.key_id, key.id);
        assert.equal(line.team_id, team.id);
        assert.equal(line.org_id, org.id);
        return line.credential;
      };
      assert.equal(await credentialOf(), 'config');
      const cred = await admin.create('credentials', { org_id: org.id, provider: 'mock', name: 'm', secret: 'sk-org-mock-000000011', active: true });
      plaintexts.push('sk-org-mock-000000011', 'sk-team-mock-00000012', 'sk-key-mock-000000013');
      assert.equal(await credentialOf(), 'org');
      const tb = await admin.create('byok', { team_id: team.id, provider: 'mock', secret: 'sk-team-mock-00000012' });
      assert.equal(await credentialOf(), 'team_byok');
      const kb = await admin.create('byok', { key_id: key.id, provider: 'mock', secret: 'sk-key-mock-000000013' });
      assert.equal(await credentialOf(), 'key_byok');
      await admin.remove('byok', kb.id);
      assert.equal(await credentialOf(), 'team_byok');
      await admin.remove('byok', tb.id);
      assert.equal(await credentialOf(), 'org');
      await admin.action('credentials', cred.id, 'deactivate');
      assert.equal(await credentialOf(), 'config');
    });

    it('the secret sent upstream follows activate, deactivate, BYOK create/update/delete at once', T, async () => {
      const { org, team, key, secret } = await tenant({});
      /** The key provider `up` was sent for one call of this tenant's key. */
      const sentKey = async () => {
        const n0 = up.requests.length;
        await chat(secret, 'fx-chat');
        assert.equal(up.requests.length, n0 + 1, 'one upstream request');
        return up.requests.at(-1).headers.authorization;
      };
      const sA = 'sk-upstream-org-A-0000000021';
      const sB = 'sk-upstream-org-B-0000000022';
      const sT = 'sk-upstream-team-00000000023';
      const sK = 'sk-upstream-key-000000000024';
      const sK2 = 'sk-upstream-key-000000000025';
      plaintexts.push(sA, sB, sT, sK, sK2);
      assert.equal(await sentKey(), `Bearer ${UPSTREAM_KEY}`);
      const a = await admin.create('credentials', { org_id: org.id, provider: 'up', name: 'A', secret: sA, active: true });
      assert.equal(await sentKey(), `Bearer ${sA}`);
      const b = await admin.create('credentials', { org_id: org.id, provider: 'up', name: 'B', secret: sB });
      assert.equal(await sentKey(), `Bearer ${sA}`, 'an inactive credential is not used');
      await admin.action('credentials', b.id, 'activate');
      assert.equal(await sentKey(), `Bearer ${sB}`, 'activate switches at once');
      await sleep(300); // the NOTIFY of A's deactivation arrives
      assert.equal(await sentKey(), `Bearer ${sB}`, 'and stays switched');
      await admin.action('credentials', a.id, 'activate');
      await sleep(300);
      assert.equal(await sentKey(), `Bearer ${sA}`);
      await admin.action('credentials', a.id, 'deactivate');
      assert.equal(await sentKey(), `Bearer ${UPSTREAM_KEY}`, 'none active: the config key');
      await admin.action('credentials', b.id, 'activate');
      const rotated = 'sk-upstream-org-B-rotated-026';
      plaintexts.push(rotated);
      await admin.update('credentials', b.id, { secret: rotated });
      assert.equal(await sentKey(), `Bearer ${rotated}`, 'a new secret at once');
      const tb = await admin.create('byok', { team_id: team.id, provider: 'up', secret: sT });
      assert.equal(await sentKey(), `Bearer ${sT}`);
      const kb = await admin.create('byok', { key_id: key.id, provider: 'up', secret: sK });
      assert.equal(await sentKey(), `Bearer ${sK}`);
      await admin.update('byok', kb.id, { secret: sK2 });
      assert.equal(await sentKey(), `Bearer ${sK2}`);
      await admin.remove('byok', kb.id);
      assert.equal(await sentKey(), `Bearer ${sT}`);
      await admin.remove('byok', tb.id);
      assert.equal(await sentKey(), `Bearer ${rotated}`);
      await admin.remove('credentials', b.id);
      assert.equal(await sentKey(), `Bearer ${UPSTREAM_KEY}`);
    });
  });

  /* ------------------------------------------------------------ at rest and in logs */

  describe('after all of the above: no plaintext anywhere it must not be', () => {
    it('no response but include_secret shows a secret; no key shows after its create', T, async () => {
      const creates = new Set();
      for (const t of transcript) {
        for (const p of plaintexts) {
          if (!t.text.includes(p)) continue;
          if (t.path.includes('include_secret=true')) continue;
          // a key's (or admin key's) create answer is the one place it appears
          const j = JSON.parse(t.text);
          assert.equal(j.key, p, `${p.slice(0, 6)}... appears in the answer of ${t.path}`);
          assert.ok(!creates.has(p), `${p.slice(0, 6)}... answered twice`);
          creates.add(p);
        }
      }
      assert.ok(creates.size >= 10);
    });

    it('pg_dump and the logs hold no plaintext key or secret; keys are stored as sha256', T, async () => {
      assert.ok(plaintexts.length >= 20, `${plaintexts.length} plaintexts made`);
      const dump = execFileSync(pgDumpBin(), ['--data-only', '-d', pg.conninfo], { encoding: 'utf8', maxBuffer: 256 << 20 });
      assert.match(dump, /COPY public\.provider_credentials/);
      assert.match(dump, /COPY public\.audit_log/);
      for (const p of plaintexts) {
        assert.ok(!dump.includes(p), `${p.slice(0, 6)}... in pg_dump`);
        assert.ok(!gw.stderr.includes(p), `${p.slice(0, 6)}... in stderr`);
        assert.ok(!JSON.stringify(gw.accessLog).includes(p), `${p.slice(0, 6)}... in the access log`);
        assert.ok(!gw.stdoutGarbage.join('\n').includes(p), `${p.slice(0, 6)}... in stdout`);
      }
      assert.ok(!gw.stderr.includes(MASTER_KEY) && !JSON.stringify(gw.accessLog).includes(MASTER_KEY), 'the master key is not logged');
      const live = pg.query("SELECT encode(key_hash, 'hex') FROM virtual_keys UNION ALL SELECT encode(key_hash, 'hex') FROM admin_keys").trim().split('\n');
      const digests = new Set(plaintexts.filter((x) => VKEY.test(x) || AKEY.test(x)).map(sha256hex));
      for (const h of live) assert.ok(digests.has(h), `stored key_hash ${h} is the sha256 of a key this file made`);
      // the admin requests are logged, with the actor, not the key
      const adminLines = gw.accessLog.filter((e) => typeof e.path === 'string' && e.path.startsWith('/admin/'));
      assert.ok(adminLines.length > 50);
      assert.ok(adminLines.some((e) => e.admin === 'master'));
    });
  });

  /* ------------------------------------------------------------ shutdown */

  it('stops cleanly with no sanitizer report', T, async () => {
    const exit = await gw.stop();
    assert.deepEqual(gw.sanitizerReports(), [], gw.stderr.slice(-4000));
    for (const p of plaintexts) assert.ok(!gw.stderr.includes(p), `${p.slice(0, 6)}... in stderr`);
    assert.deepEqual(exit, { code: 0, signal: null }, gw.stderr.slice(-2000));
  });
});

describe('admin API without a database', () => {
  let gw;
  before(async () => {
    gw = await startGateway(baseConfig('https://127.0.0.1:9', (cfg) => {
      cfg.admin = { master_key: MASTER_KEY };
    }));
  });
  after(async () => {
    await gw?.stop();
  });

  it('every /admin/ call answers 503 no_database', T, async () => {
    for (const [method, path] of [['GET', 'teams'], ['POST', 'organizations'], ['GET', 'audit-log']]) {
      const r = await adminClient(gw).call(method, path, method === 'POST' ? { name: 'x' } : undefined);
      assertErr(r, 503, { code: 'no_database' });
      assert.equal(r.headers.get('retry-after'), '1');
    }
    const exit = await gw.stop();
    assert.deepEqual(gw.sanitizerReports(), []);
    assert.deepEqual(exit, { code: 0, signal: null });
  });
});
