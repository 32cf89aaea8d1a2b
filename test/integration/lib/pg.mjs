// pg.mjs - a throwaway PostgreSQL cluster for a test file, on test/pgtmp.sh.
//
//   const pg = await startPg();     // initdb + start: ~2 s
//   after(() => pg.stop());         // always; stop() is idempotent
//   pg.query('SELECT 1');           // '1\n'
//   pg.query("SELECT :'p1'::int + :'p2'::int", [1, 2]);
//
// The server listens on 127.0.0.1 (a free port) with trust authentication
// for user "postgres"; the database "tollgate" exists and is empty.
// Nothing global is registered: a test file that forgets stop() leaks the
// cluster (and its data directory under /tmp/tgpg.*).
//
// query() runs psql (-X -A -t -q -v ON_ERROR_STOP=1, VERBOSITY=verbose)
// synchronously with the SQL on stdin, and returns what psql printed:
// unaligned rows, fields separated by "|", one row a line, no header.
// Parameters are psql variables: params[0] is p1, params[1] is p2, ...
// Write :'p1' in the SQL for a properly quoted literal (psql escapes it),
// :"p1" for a quoted identifier. Values are passed as String(value);
// null/undefined are refused (write NULL in the SQL instead). Variables are
// not substituted inside quoted literals or dollar-quoted bodies. On an SQL
// error it throws an Error whose message holds psql's stderr and whose
// `sqlstate` is the five-character SQLSTATE (e.g. '23505'), when psql
// printed one.
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { REPO } from './paths.mjs';

const execFileP = promisify(execFile);
const PGTMP = path.join(REPO, 'test', 'pgtmp.sh');

/** Runs `bash pgtmp.sh CMD DIR`, resolving to its stdout. */
async function pgtmp(cmd, dir) {
  try {
    const { stdout } = await execFileP('bash', [PGTMP, cmd, dir], { maxBuffer: 16 << 20 });
    return stdout;
  } catch (e) {
    throw new Error(`pgtmp.sh ${cmd} ${dir} failed: ${e.stderr || e.message}`);
  }
}

/**
 * Stops the server of the cluster in dir with `pg_ctl -m immediate` (no
 * checkpoint, backends killed at once: a crash as far as clients and
 * recovery are concerned), keeping the data; pgtmp.sh resume restarts it.
 */
async function pgCtlStopImmediate(dir) {
  const bindir = fs.readdirSync('/usr/lib/postgresql')
    .filter((v) => fs.existsSync(path.join('/usr/lib/postgresql', v, 'bin', 'pg_ctl')))
    .sort((a, b) => Number(a) - Number(b))
    .map((v) => path.join('/usr/lib/postgresql', v, 'bin'))
    .pop();
  if (!bindir) throw new Error('pg_ctl not found under /usr/lib/postgresql/*/bin');
  const argv = [path.join(bindir, 'pg_ctl'), '-D', path.join(dir, 'data'), '-m', 'immediate', '-w', 'stop'];
  // as pgtmp.sh does: as root, the server belongs to "postgres"
  const [cmd, ...args] = process.getuid() === 0 ? ['runuser', '-u', 'postgres', '--', ...argv] : argv;
  try {
    await execFileP(cmd, args);
  } catch (e) {
    throw new Error(`pg_ctl stop -m immediate failed: ${e.stderr || e.message}`);
  }
}

/** Parses "host=H port=P user=U dbname=D" (pgtmp.sh's output, no quoting). */
function parseConninfo(conninfo) {
  const out = {};
  for (const part of conninfo.trim().split(/\s+/)) {
    const eq = part.indexOf('=');
    if (eq > 0) out[part.slice(0, eq)] = part.slice(eq + 1);
  }
  return out;
}

/** Runs sql through psql against conninfo; see the header. */
function psql(conninfo, sql, params = []) {
  const args = ['-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', '-v', 'VERBOSITY=verbose', '-d', conninfo];
  params.forEach((v, i) => {
    if (v === null || v === undefined) throw new TypeError(`query parameter p${i + 1} is ${v}: write NULL in the SQL`);
    args.push('-v', `p${i + 1}=${String(v)}`);
  });
  try {
    return execFileSync('psql', args, { input: sql, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], timeout: 30000 });
  } catch (e) {
    const stderr = String(e.stderr ?? '');
    const err = new Error(`psql failed: ${stderr.trim() || e.message}\nSQL: ${sql}`);
    err.sqlstate = /ERROR:\s+([0-9A-Z]{5}):/.exec(stderr)?.[1] ?? null;
    err.stderr = stderr;
    throw err;
  }
}

/**
 * Starts a cluster. Resolves to
 *   {conninfo, url, port, dir, query(sql, params?), createDatabase(name),
 *    pause(), resume(), stop()}
 * conninfo/url name the database "tollgate"; createDatabase(name) makes
 * another empty one and returns {name, conninfo, url, query}. pause() and
 * resume() (async) stop and restart the server on the same port, keeping the
 * data (pause({immediate: true}) stops it as a crash would: -m immediate);
 * stop() (sync) stops it and removes dir, and may be called any number of
 * times.
 */
export async function startPg() {
  const dir = fs.mkdtempSync('/tmp/tgpg.');
  let conninfo;
  try {
    conninfo = (await pgtmp('start', dir)).trim();
  } catch (e) {
    try {
      execFileSync('bash', [PGTMP, 'stop', dir], { stdio: 'ignore' });
    } catch {
      /* the start error is the one to report */
    }
    throw e;
  }
  const { port } = parseConninfo(conninfo);
  let stopped = false;

  const database = (name) => ({
    name,
    conninfo: `host=127.0.0.1 port=${port} user=postgres dbname=${name}`,
    url: `postgres://postgres@127.0.0.1:${port}/${name}`,
    query: (sql, params) => psql(`host=127.0.0.1 port=${port} user=postgres dbname=${name}`, sql, params),
  });
  const main = database('tollgate');

  return {
    dir,
    port: Number(port),
    conninfo: main.conninfo,
    url: main.url,
    query: main.query,
    createDatabase(name) {
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new TypeError(`database name ${JSON.stringify(name)}: use [a-z0-9_]`);
      main.query(`CREATE DATABASE ${name}`);
      return database(name);
    },
    /** immediate: `pg_ctl stop -m immediate` (a crash) instead of -m fast. */
    async pause({ immediate = false } = {}) {
      if (immediate) await pgCtlStopImmediate(dir);
      else await pgtmp('pause', dir);
    },
    async resume() {
      await pgtmp('resume', dir);
    },
    stop() {
      if (stopped) return;
      stopped = true;
      execFileSync('bash', [PGTMP, 'stop', dir], { stdio: 'ignore', timeout: 60000 });
    },
  };
}
