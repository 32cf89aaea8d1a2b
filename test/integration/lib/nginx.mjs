// nginx.mjs - nginx as the reverse proxy in front of tollgate instances, the
// way an operator runs it (upstream keep-alive, retries to the other
// instance, no buffering for SSE), for the rolling-restart test.
//
//   const ngx = await startNginx({ upstreams: [portA, portB] });
//   fetch(`http://127.0.0.1:${ngx.port}/v1/...`);
//   await ngx.reload();          // SIGHUP after rewriting the config
//   after(() => ngx.stop());     // always; stop() is idempotent
//
// Everything lives in a temp dir (config, pid, logs, temp paths); nginx runs
// in the foreground as a child (`nginx -p DIR/ -c DIR/nginx.conf -e
// DIR/error.log -g 'daemon off;'`) and listens on a free 127.0.0.1 port.
// The access log (DIR/access.log) has one JSON object a line: status,
// request id, upstream_addr (several when nginx went on to the next
// upstream), upstream_status, request_time.
//
// nginx missing is an error, not a skip: install nginx-light
// (cmake/install-deps.sh test).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { sleep } from './gateway.mjs';

const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

/** The nginx binary: $NGINX_BIN, else the first nginx on PATH or in /usr/sbin. */
export function nginxBinary() {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/local/sbin', '/usr/local/nginx/sbin'];
  const candidates = process.env.NGINX_BIN ? [process.env.NGINX_BIN] : dirs.filter(Boolean).map((d) => path.join(d, 'nginx'));
  for (const c of candidates) {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return c;
    } catch {
      /* next */
    }
  }
  throw new Error('nginx not found (looked on PATH and in /usr/sbin): install nginx-light ' +
    '(cmake/install-deps.sh test), or set NGINX_BIN');
}

/** A port that was free on 127.0.0.1 a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * The config: one upstream `tollgate` with every port in `upstreams`, and a
 * server on 127.0.0.1:port passing everything to it. These are the settings
 * a rolling restart needs (docs/operations.md):
 *   - keepalive to the upstreams over HTTP/1.1 (Connection ""), with an idle
 *     keepalive_timeout below tollgate's timeouts.idle, so that nginx, not
 *     tollgate, closes an idle connection (a POST sent on a connection the
 *     upstream has just closed is not retried: 502);
 *   - proxy_next_upstream error timeout http_502 http_503: a refused
 *     connect (an instance that is down or has closed its listener) goes to
 *     the other instance. A POST is retried only when nothing of it was sent
 *     (nginx's rule without non_idempotent), which is the safe choice: a
 *     call is never run twice;
 *   - max_fails=0: a refused connect costs one round trip on loopback/LAN,
 *     and nginx never takes an instance out for fail_timeout after it came
 *     back (with max_fails=1, two instances restarted within fail_timeout
 *     can both be marked down at once: 502 "no live upstreams");
 *   - proxy_buffering off and a long proxy_read_timeout for SSE.
 * `keepaliveTimeout` is nginx's upstream keepalive_timeout, `serverParams`
 * what follows each `server` line; `extra` lines go into the location block.
 */
export function nginxConfig({ dir, port, upstreams, keepalive = 32, keepaliveTimeout = '4s', serverParams = 'max_fails=0', extra = [] }) {
  const servers = upstreams.map((p) => `        server 127.0.0.1:${p} ${serverParams};`).join('\n');
  // as root, nginx's workers switch to the default user (nobody:nobody, and
  // Debian has no group "nobody")
  const user = process.getuid?.() === 0 ? 'user nobody nogroup;\n' : '';
  return `# written by test/integration/lib/nginx.mjs
${user}worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;

events {
    worker_connections 4096;
}

http {
    log_format tg escape=json '{"status":$status,"request_id":"$http_x_request_id",'
        '"upstream_addr":"$upstream_addr","upstream_status":"$upstream_status",'
        '"request_time":$request_time,"method":"$request_method","uri":"$request_uri"}';
    access_log ${dir}/access.log tg;

    client_body_temp_path ${dir}/client_body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;

    keepalive_timeout 30s;            # client side
    keepalive_requests 100000;

    upstream tollgate {
${servers}
        keepalive ${keepalive};                   # idle connections kept per worker
        keepalive_requests 100000;
        keepalive_timeout ${keepaliveTimeout};          # below tollgate's timeouts.idle
    }

    server {
        listen 127.0.0.1:${port};

        location / {
            proxy_pass http://tollgate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;               # SSE events pass as they come
            proxy_request_buffering on;        # the whole body first: a retry can resend it
            proxy_connect_timeout 2s;
            proxy_read_timeout 300s;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 10s;
            add_header x-upstream-addr $upstream_addr always;
${extra.map((l) => `            ${l}`).join('\n')}
        }
    }
}
`;
}

class Nginx {
  constructor(dir, opts) {
    this.dir = dir;
    this.opts = opts;
    this.port = null;
    this.proc = null;
    this.exit = null;
    this.output = '';
  }

  get confPath() {
    return path.join(this.dir, 'nginx.conf');
  }

  /** The error log so far. */
  errorLog() {
    try {
      return fs.readFileSync(path.join(this.dir, 'error.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** The access log so far, parsed (one object a line). */
  accessLog() {
    let text = '';
    try {
      text = fs.readFileSync(path.join(this.dir, 'access.log'), 'utf8');
    } catch {
      return [];
    }
    return text.split('\n').filter(Boolean).map((l) => {
      try {
        return JSON.parse(l);
      } catch {
        return { unparsed: l };
      }
    });
  }

  /** Rewrites the config (opts merged into the ones given at start). */
  writeConfig(opts = {}) {
    this.opts = { ...this.opts, ...opts };
    fs.writeFileSync(this.confPath, nginxConfig({ ...this.opts, dir: this.dir, port: this.port }));
  }

  /** Rewrites the config and makes nginx load it (SIGHUP); resolves once the new workers run. */
  async reload(opts = {}) {
    this.writeConfig(opts);
    const mark = this.errorLog().length;
    this.proc.kill('SIGHUP');
    const until = Date.now() + 5000;
    for (;;) {
      const log = this.errorLog().slice(mark);
      if (/\[emerg\]/.test(log)) throw new Error(`nginx rejected the new config:\n${log}`);
      if (/start worker process/.test(log)) return;
      if (Date.now() > until) throw new Error(`nginx did not reload within 5 s:\n${log}`);
      await sleep(50);
    }
  }

  /** SIGQUIT (graceful), SIGKILL after graceMs; removes the temp dir. Always resolves. */
  async stop(graceMs = 3000) {
    if (this.proc && !this.exit) {
      const exited = new Promise((r) => this.proc.once('exit', r));
      this.proc.kill('SIGQUIT');
      const t = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    }
    if (this.dir && !process.env.TG_IT_KEEP_NGINX) fs.rmSync(this.dir, { recursive: true, force: true });
    return this.exit;
  }
}

async function tryStart(ngx, bin) {
  fs.writeFileSync(path.join(ngx.dir, 'error.log'), '');
  ngx.writeConfig();
  ngx.exit = null;
  ngx.output = '';
  const child = spawn(bin, ['-p', `${ngx.dir}/`, '-c', ngx.confPath, '-e', path.join(ngx.dir, 'error.log'), '-g', 'daemon off;'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  ngx.proc = child;
  live.add(child);
  child.stdout.on('data', (d) => { ngx.output += d; });
  child.stderr.on('data', (d) => { ngx.output += d; });
  child.on('exit', (code, signal) => {
    ngx.exit = { code, signal };
    live.delete(child);
  });
  await new Promise((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  const until = Date.now() + 5000;
  for (;;) {
    if (ngx.exit) return false;
    const ok = await new Promise((resolve) => {
      const s = net.connect({ port: ngx.port, host: '127.0.0.1' });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return true;
    if (Date.now() > until) {
      child.kill('SIGKILL');
      throw new Error(`nginx did not listen on ${ngx.port} within 5 s:\n${ngx.output}${ngx.errorLog()}`);
    }
    await sleep(30);
  }
}

/**
 * Starts nginx in front of 127.0.0.1:{upstreams}; resolves with an object
 * {port, dir, proc, accessLog(), errorLog(), reload(opts), stop()} once it
 * accepts connections. Options: see nginxConfig.
 */
export async function startNginx(opts) {
  const bin = nginxBinary();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-nginx-'));
  fs.chmodSync(dir, 0o755); // the workers (nobody) reach the temp paths in it
  const ngx = new Nginx(dir, opts);
  for (let attempt = 0; attempt < 5; attempt++) {
    ngx.port = await freePort();
    if (await tryStart(ngx, bin)) return ngx;
    const why = `${ngx.output}${ngx.errorLog()}`;
    if (!/Address already in use/.test(why)) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`nginx exited at start (${JSON.stringify(ngx.exit)}):\n${why}`);
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
  throw new Error('nginx: no free port after 5 attempts');
}
