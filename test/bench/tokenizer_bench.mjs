// tokenizer_bench.mjs - tokens per second of npm tiktoken (encode_ordinary,
// WASM) and of `tollgate tokenize --bench N` on the same text. Run by
// tokenizer.sh, which builds the binary and installs tiktoken; by hand:
//   TOLLGATE_BIN=build-bench/tollgate BENCH_SECONDS=2 node test/bench/tokenizer_bench.mjs
// Prints the table on stdout; exits 1 if a token count differs or a run fails.
// BENCH_JSON=FILE also writes the rows there (with MB/s), for proof.sh.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, '..', '..');
const CORPUS = path.join(REPO, 'test', 'data', 'tokenizer');
const require = createRequire(path.join(REPO, 'test', 'integration', 'package.json'));
const { get_encoding } = require('tiktoken');
const tiktokenVersion = JSON.parse(fs.readFileSync(
  path.join(path.dirname(require.resolve('tiktoken')), 'package.json'), 'utf8')).version;

const BIN = process.env.TOLLGATE_BIN ? path.resolve(process.env.TOLLGATE_BIN) : path.join(REPO, 'build-bench', 'tollgate');
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
if (!(SECONDS > 0)) fail(`BENCH_SECONDS must be a positive number, not ${process.env.BENCH_SECONDS}`);
const ENCODINGS = ['o200k_base', 'cl100k_base'];

function fail(msg) {
  console.error(`tokenizer bench: ${msg}`);
  process.exit(1);
}

function tollgate(args) {
  const r = spawnSync(BIN, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) fail(`${BIN}: ${r.error.message}`);
  if (r.status !== 0) fail(`tollgate ${args.join(' ')}: exit ${r.status ?? r.signal}; stderr: ${r.stderr.trim()}`);
  return r.stdout;
}

/** Runs `--bench n` and parses its line. */
function tollgateBench(encoding, file, n) {
  const out = tollgate(['tokenize', '--encoding', encoding, '--bench', String(n), file]);
  const m = /^tokens=(\d+) passes=(\d+) seconds=([0-9.eE+-]+) tokens_per_sec=([0-9.eE+-]+)\s*$/.exec(out);
  if (!m) fail(`unexpected --bench output: ${JSON.stringify(out)}`);
  return { tokens: Number(m[1]), passes: Number(m[2]), seconds: Number(m[3]), tps: Number(m[4]) };
}

/** tiktoken: warm-up, then encode_ordinary in a loop for at least SECONDS. */
function measureTiktoken(enc, text) {
  const tokens = enc.encode_ordinary(text).length;
  let t0 = performance.now();
  while (performance.now() - t0 < Math.min(500, SECONDS * 250)) enc.encode_ordinary(text); // warm-up
  let passes = 0;
  t0 = performance.now();
  let elapsed = 0;
  do {
    enc.encode_ordinary(text);
    passes++;
    elapsed = (performance.now() - t0) / 1000;
  } while (elapsed < SECONDS);
  return { tokens, passes, seconds: elapsed, tps: (tokens * passes) / elapsed };
}

/** tollgate: grow N until a run takes >= 10 % of SECONDS (this is also the
 * warm-up), then one run sized for SECONDS. */
function measureTollgate(encoding, file) {
  let n = 1;
  let r = tollgateBench(encoding, file, n);
  while (r.seconds < SECONDS / 10 && n < 1e9) {
    n = r.seconds > 0 ? Math.max(n * 2, Math.ceil((n * SECONDS) / 5 / r.seconds)) : n * 10;
    r = tollgateBench(encoding, file, n);
  }
  // sized for SECONDS; once more if the estimate fell well short (a cold first run)
  for (let tries = 0; tries < 3; tries++) {
    n = Math.max(1, Math.round((n * SECONDS) / Math.max(r.seconds, 1e-6)));
    r = tollgateBench(encoding, file, n);
    if (r.seconds >= SECONDS * 0.7) break;
  }
  return r;
}

// ---- inputs
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-tokbench-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
const valid = [];
for (const f of fs.readdirSync(CORPUS).sort()) {
  if (f === 'README.md' || f.startsWith('.')) continue;
  const b = fs.readFileSync(path.join(CORPUS, f));
  if (b.length && Buffer.from(b.toString('utf8'), 'utf8').equals(b)) valid.push({ f, b });
}
if (!valid.length) fail(`no corpus in ${CORPUS}`);
const corpusFile = path.join(tmp, 'corpus.txt');
fs.writeFileSync(corpusFile, Buffer.concat(valid.map((v) => v.b)));
const inputs = [
  { name: 'corpus', file: corpusFile, what: `${valid.length} valid-UTF-8 files of test/data/tokenizer concatenated` },
  { name: 'en_prose', file: path.join(CORPUS, 'en_prose.txt'), what: 'test/data/tokenizer/en_prose.txt' },
];

// ---- header
const cpu = os.cpus()[0]?.model ?? '?';
const version = spawnSync(BIN, ['--version'], { encoding: 'utf8' });
const say = (s = '') => console.log(s);
say(`tokenizer benchmark  ${new Date().toISOString().replace(/\.\d+Z$/, 'Z')}`);
say(`host: ${os.hostname()}, ${os.availableParallelism?.() ?? os.cpus().length} CPUs (${cpu}), load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
say(`tollgate: ${BIN} (${`${version.stdout}${version.stderr}`.trim().split('\n')[0] || '?'})`);
say(`tiktoken: npm ${tiktokenVersion} (WASM) on node ${process.version}; BENCH_SECONDS=${SECONDS}`);
for (const i of inputs) say(`input ${i.name}: ${i.what}, ${fs.statSync(i.file).size} bytes`);
say();

// ---- measure
const rows = [];
const problems = [];
for (const encoding of ENCODINGS) {
  const enc = get_encoding(encoding);
  for (const input of inputs) {
    const text = fs.readFileSync(input.file).toString('utf8');
    const tk = measureTiktoken(enc, text);
    const count = Number(tollgate(['tokenize', '--encoding', encoding, '--count', input.file]).trim());
    const tg = measureTollgate(encoding, input.file);
    if (count !== tk.tokens || tg.tokens !== tk.tokens) {
      problems.push(`TOKEN COUNT MISMATCH ${encoding} ${input.name}: tiktoken ${tk.tokens}, tollgate --count ${count}, tollgate --bench tokens=${tg.tokens}`);
    }
    rows.push({ encoding, input: input.name, bytes: Buffer.byteLength(text), tokens: tk.tokens, tk, tg });
  }
  enc.free();
}

// ---- table
const fmt = (x) => Math.round(x).toLocaleString('en-US');
const head = ['encoding', 'input', 'bytes', 'tokens', 'tiktoken tok/s', 'tollgate tok/s', 'ratio', 'tiktoken passes', 'tollgate passes'];
const body = rows.map((r) => [r.encoding, r.input, String(r.bytes), String(r.tokens), fmt(r.tk.tps), fmt(r.tg.tps),
  `${(r.tg.tps / r.tk.tps).toFixed(2)}x`, `${r.tk.passes} in ${r.tk.seconds.toFixed(2)}s`, `${r.tg.passes} in ${r.tg.seconds.toFixed(2)}s`]);
const width = head.map((h, c) => Math.max(h.length, ...body.map((b) => b[c].length)));
const line = (cells) => cells.map((s, c) => (c < 2 ? s.padEnd(width[c]) : s.padStart(width[c]))).join('  ');
say(line(head));
say(width.map((w) => '-'.repeat(w)).join('  '));
for (const b of body) say(line(b));
say();
say('ratio = tollgate tok/s / tiktoken tok/s. tiktoken: encode_ordinary in a loop after a warm-up;');
say('tollgate: tokens_per_sec of its own `tokenize --bench N` (wall time of the encode loop), N sized for BENCH_SECONDS.');
if (process.env.BENCH_JSON) {
  const mbps = (bytes, passes, seconds) => (bytes * passes) / seconds / 1e6;
  fs.writeFileSync(process.env.BENCH_JSON, JSON.stringify({
    tiktoken: tiktokenVersion, node: process.version, seconds: SECONDS, problems,
    rows: rows.map((r) => ({
      encoding: r.encoding, input: r.input, bytes: r.bytes, tokens: r.tokens,
      tiktoken_tps: r.tk.tps, tollgate_tps: r.tg.tps,
      tiktoken_mbps: mbps(r.bytes, r.tk.passes, r.tk.seconds),
      tollgate_mbps: mbps(r.bytes, r.tg.passes, r.tg.seconds),
    })),
  }, null, 1) + '\n');
}
if (problems.length) {
  say();
  for (const p of problems) say(p);
  process.exitCode = 1;
} else {
  say('token counts: equal for every cell');
}
