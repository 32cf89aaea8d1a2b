// tenancy.mjs - tollgate with a database: a migrated throwaway PostgreSQL,
// gateways configured against it, and a small admin API client.
//
//   const pg = await startMigratedPg();            // cluster + `tollgate migrate`
//   const gw = await startDbGateway(pg, { upstreamUrl });
//   const admin = adminClient(gw);                 // master key
//   const org = await admin.create('organizations', { name: 'acme' });
//   ...
//   after(async () => { await gw.stop(); pg.stop(); });
//
// Every gateway of one test file shares SECRET_KEY (the Fernet key for
// credentials at rest) and MASTER_KEY, so two instances see the same
// database the same way.
import { startPg } from './pg.mjs';
import { KEY, baseConfig, runTollgate, startGateway } from './gateway.mjs';

/** The admin master key of every database gateway started here. */
export const MASTER_KEY = 'tg-master-key-0123456789abcdef';
/** A fixed Fernet key (32 bytes, URL-safe base64) for secrets at rest. */
export const SECRET_KEY = 'cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=';

/** A throwaway cluster with tollgate's schema applied (`tollgate migrate`). */
export async function startMigratedPg() {
  const pg = await startPg();
  const r = await runTollgate(['migrate', '--database-url', pg.conninfo], { timeoutMs: 60000 });
  if (r.code !== 0) {
    pg.stop();
    throw new Error(`tollgate migrate failed (${r.code}): ${r.stderr}${r.stdout}`);
  }
  return pg;
}

/**
 * The base config (lib/gateway.mjs) plus database.url, secrets.keys and
 * admin.master_key; cache_refresh short so a lost NOTIFY is noticed in
 * tests. `patch(cfg)` may edit it further.
 */
export function dbConfig(pg, { upstreamUrl = 'https://127.0.0.1:9', patch } = {}) {
  return baseConfig(upstreamUrl, (cfg) => {
    cfg.database = { url: pg.conninfo, pool_size: 2, connect_timeout: '2s', statement_timeout: '5s', cache_refresh: '30s' };
    cfg.secrets = { keys: SECRET_KEY };
    cfg.admin = { master_key: MASTER_KEY };
    if (patch) patch(cfg);
  });
}

/**
 * Starts tollgate on dbConfig and waits until /health/ready says ready (the
 * schema checked and the tenancy cache loaded).
 */
export async function startDbGateway(pg, opts = {}) {
  const gw = await startGateway(dbConfig(pg, opts), opts.start ?? {});
  await waitReady(gw, opts.readyTimeoutMs ?? 15000);
  return gw;
}

/** Polls GET /health/ready until 200 (or `want` status). */
export async function waitReady(gw, timeoutMs = 15000, want = 200) {
  const until = Date.now() + timeoutMs;
  let last = null;
  while (Date.now() < until) {
    try {
      const r = await fetch(gw.url('/health/ready'));
      last = `${r.status} ${await r.text()}`;
      if (r.status === want) return;
    } catch (e) {
      last = String(e);
    }
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`/health/ready did not answer ${want} within ${timeoutMs} ms (last: ${last}); stderr:\n${gw.stderr.slice(-2000)}`);
}

/**
 * A client of gw's admin API with `key` (default: the master key). Each
 * call resolves to {status, body (parsed JSON or null), headers}; the
 * create/get/... helpers throw unless the status is the expected one and
 * return the body.
 */
export function adminClient(gw, key = MASTER_KEY) {
  const call = async (method, path, body, headers = {}) => {
    const r = await fetch(gw.url(`/admin/${path}`), {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await r.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    return { status: r.status, body: parsed, text, headers: r.headers };
  };
  const expect = (want) => (r) => {
    if (r.status !== want) throw new Error(`admin API: expected ${want}, got ${r.status}: ${r.text}`);
    return r.body;
  };
  return {
    call,
    create: (res, body) => call('POST', res, body).then(expect(201)),
    get: (res, id, query = '') => call('GET', `${res}/${id}${query}`).then(expect(200)),
    list: (res, query = '') => call('GET', `${res}${query}`).then(expect(200)),
    update: (res, id, body) => call('PATCH', `${res}/${id}`, body).then(expect(200)),
    remove: (res, id) => call('DELETE', `${res}/${id}`).then(expect(200)),
    action: (res, id, name) => call('POST', `${res}/${id}/${name}`).then(expect(200)),
  };
}

/** An org, a team in it and a key of that team: {org, team, key, secret}. */
export async function makeTenant(admin, name, keyFields = {}, teamFields = {}) {
  const org = await admin.create('organizations', { name: `org-${name}` });
  // credits not enforced unless asked (new teams are prepaid: credit_limit 0)
  const team = await admin.create('teams', { org_id: org.id, name: `team-${name}`, credit_limit: null, ...teamFields });
  const key = await admin.create('keys', { team_id: team.id, alias: `key-${name}`, ...keyFields });
  return { org, team, key, secret: key.key };
}

/** tollgate_usd(): nano-USD (number, string or bigint) as the API's decimal string. */
export function usd(nano) {
  let n = BigInt(nano);
  const neg = n < 0n;
  if (neg) n = -n;
  let frac = (n % 1000000000n).toString().padStart(9, '0').replace(/0+$/, '');
  if (frac.length < 2) frac = frac.padEnd(2, '0');
  return `${neg ? '-' : ''}${n / 1000000000n}.${frac}`;
}

/** JSON.parse, or null. */
export const parseJson = (text) => {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
};

/**
 * One request to gw as `key` (the config key by default; null: none):
 * {status, body (JSON or null), text, headers}. body: object (JSON) or raw string.
 */
export async function api(gw, method, p, { key = KEY, body, headers = {}, timeoutMs = 10000 } = {}) {
  const h = { ...headers };
  if (key !== null) h.authorization = `Bearer ${key}`;
  if (body !== undefined) h['content-type'] = 'application/json';
  const r = await fetch(gw.url(p), {
    method,
    headers: h,
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await r.text();
  return { status: r.status, body: parseJson(text), text, headers: r.headers };
}

/**
 * Runs `once()` (an async call returning {status, ...}) until a non-200, at
 * most `limit` times: {ok, last}. Throws when every call was admitted.
 */
export async function untilRefused(once, limit = 200) {
  let ok = 0;
  for (let i = 0; i < limit; i++) {
    const r = await once();
    if (r.status !== 200) return { ok, last: r };
    ok++;
  }
  throw new Error(`still admitted after ${limit} calls`);
}
