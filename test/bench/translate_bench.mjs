// translate_bench.mjs - driven by translate.sh (see there). Starts tollgate
// with mocks in the three formats, runs streamed calls for each
// caller/upstream pair and reads tollgate's own time per call from its
// access log.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';

const BIN = process.env.TOLLGATE_BIN;
const N = Number(process.env.BENCH_REQUESTS || 2000);
const TOKENS = Number(process.env.BENCH_TOKENS || 64);
const CONC = Number(process.env.BENCH_CONCURRENCY || 8);
const KEY = 'tg-bench-key-0123456789abcdef0123';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tg-translate-'));
const cfgFile = path.join(dir, 'tollgate.yaml');
const logFile = path.join(dir, 'access.log');
fs.writeFileSync(cfgFile, `listen: "127.0.0.1:0"
log: {level: info, access: true}
providers:
  - {name: m-openai, type: mock, mock: {default_tokens: ${TOKENS}}}
  - {name: m-anthropic, type: mock, mock: {default_tokens: ${TOKENS}, format: anthropic}}
  - {name: m-gemini, type: mock, mock: {default_tokens: ${TOKENS}, format: gemini}}
models:
  - {name: to-openai, provider: m-openai, model: gpt-4o-mini}
  - {name: to-anthropic, provider: m-anthropic, model: claude-sonnet-4-5}
  - {name: to-gemini, provider: m-gemini, model: gemini-2.5-flash}
keys:
  - {key: "${KEY}", alias: bench}
`);

const out = fs.openSync(logFile, 'w');
const child = spawn(BIN, ['--config', cfgFile], { stdio: ['ignore', out, 'pipe'] });
let port = 0;
await new Promise((resolve, reject) => {
  let err = '';
  const t = setTimeout(() => reject(new Error(`tollgate did not start: ${err}`)), 15000);
  child.stderr.on('data', (d) => {
    err += d;
    const m = /listening on [^\s]*:(\d+)/.exec(err) || /127\.0\.0\.1:(\d+)/.exec(err);
    if (m && !port) {
      port = Number(m[1]);
      clearTimeout(t);
      resolve();
    }
  });
  child.on('exit', (c) => reject(new Error(`tollgate exited ${c}: ${err}`)));
});
process.on('exit', () => child.kill('SIGKILL'));

const agent = new http.Agent({ keepAlive: true, maxSockets: CONC });
const messages = [{ role: 'user', content: 'Write a short note about the sea.' }];
const bodies = {
  openai: (model) => JSON.stringify({ model, stream: true, max_tokens: TOKENS, messages }),
  anthropic: (model) => JSON.stringify({ model, stream: true, max_tokens: TOKENS, messages }),
};
const paths = { openai: '/v1/chat/completions', anthropic: '/v1/messages' };

function call(fmt, model, id) {
  return new Promise((resolve, reject) => {
    const body = bodies[fmt](model);
    const req = http.request({
      host: '127.0.0.1', port, method: 'POST', path: paths[fmt], agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-api-key': KEY, 'x-request-id': id },
    }, (res) => {
      let events = 0;
      let tail = '';
      res.setEncoding('utf8');
      res.on('data', (d) => {
        const s = tail + d;
        const parts = s.split(/\r?\n\r?\n/);
        tail = parts.pop();
        events += parts.length;
      });
      res.on('end', () => (res.statusCode === 200 ? resolve(events) : reject(new Error(`${fmt}->${model}: HTTP ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function run(fmt, model, n, tag) {
  let next = 0;
  let events = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: CONC }, async () => {
    while (next < n) {
      const i = next++;
      events = await call(fmt, model, `${tag}-${i}`);
    }
  }));
  return { secs: Number(process.hrtime.bigint() - t0) / 1e9, events };
}

function overheads(tag) {
  const lines = fs.readFileSync(logFile, 'utf8').split('\n');
  const xs = [];
  for (const l of lines) {
    if (!l.startsWith('{') || !l.includes(`"${tag}-`)) continue;
    const j = JSON.parse(l);
    if (j.request_id.startsWith(`${tag}-`)) xs.push(j.overhead_us);
  }
  xs.sort((a, b) => a - b);
  return { mean: xs.reduce((a, b) => a + b, 0) / xs.length, p50: xs[Math.floor(xs.length / 2)], n: xs.length };
}

const pairs = [
  ['openai', 'to-openai', 'passthrough'],
  ['openai', 'to-anthropic', 'translate'],
  ['openai', 'to-gemini', 'translate'],
  ['anthropic', 'to-anthropic', 'passthrough+decode'],
  ['anthropic', 'to-openai', 'translate'],
  ['anthropic', 'to-gemini', 'translate'],
];
const rows = [];
for (const [fmt, model, mode] of pairs) {
  const tag = `${fmt}-${model}`;
  await run(fmt, model, Math.max(50, N / 10), `warm-${tag}`);
  const r = await run(fmt, model, N, tag);
  await new Promise((res) => setTimeout(res, 200));
  const o = overheads(tag);
  if (o.n !== N) throw new Error(`${tag}: ${o.n} access log lines for ${N} calls`);
  rows.push({ fmt, model, mode, rps: N / r.secs, events: r.events, ...o });
}
child.kill('SIGTERM');

const pad = (s, n) => String(s).padEnd(n);
const num = (x, d = 1) => x.toFixed(d).padStart(8);
console.log(`tollgate translation cost: ${N} streamed calls per pair, ${TOKENS} content events per answer, ${CONC} in flight, ${os.cpus().length} cores`);
console.log(`${pad('caller', 10)}${pad('upstream', 14)}${pad('mode', 20)}${'calls/s'.padStart(8)}${'events'.padStart(8)}${'us/call'.padStart(8)}${'p50'.padStart(8)}${'us/event'.padStart(9)}${'+us/ev'.padStart(8)}`);
for (const r of rows) {
  const base = rows.find((b) => b.fmt === r.fmt && b.mode !== 'translate');
  const perEv = r.mean / r.events;
  const extra = r === base ? 0 : (r.mean - base.mean) / r.events;
  console.log(`${pad(r.fmt, 10)}${pad(r.model.replace('to-', ''), 14)}${pad(r.mode, 20)}${num(r.rps, 0)}${String(r.events).padStart(8)}${num(r.mean)}${num(r.p50)}${num(perEv, 2).padStart(9)}${num(extra, 2)}`);
}
console.log('us/call: tollgate\'s own time per call (access log overhead_us, mean; p50 beside it); us/event: that per relayed SSE event;');
console.log('+us/ev: the extra per event over the same caller format\'s passthrough row (the translation cost).');
fs.rmSync(dir, { recursive: true, force: true });
