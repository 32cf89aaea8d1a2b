// tokenizer.test.mjs - `tollgate tokenize` against the npm package `tiktoken`
// (pinned 1.0.22), the oracle: for every file in test/data/tokenizer/ and for
// o200k_base and cl100k_base, the ids tollgate prints equal
// enc.encode_ordinary(buf.toString('utf8')) - invalid UTF-8 replaced by
// U+FFFD the WHATWG way, special-token text treated as ordinary text - and
// --count prints their number. Then: tiktoken's decode of our ids gives the
// sanitized text back byte for byte; stdin (`-`) works like a file; 200
// seeded random strings (corpus fragments, random code points from many
// Unicode blocks, whitespace, digits, apostrophes, invalid bytes; even cases
// o200k_base, odd cases cl100k_base) match;
// --bench prints its line; a missing data dir exits 2 and usage errors 1.
//
// CLI contract: tollgate tokenize [--encoding E] [--data-dir DIR] [--count]
//   [--bench N] FILE|-   -> "id id id\n" | "N\n" |
//   "tokens=T passes=N seconds=S tokens_per_sec=R\n"; exit 0, 2 (data file
//   missing), 1 (usage).
//
// TG_TOKENIZER_SEED=<uint32> replays another random set (the seed in use is
// printed as a test diagnostic and in every failure message).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { get_encoding } from 'tiktoken';
import { REPO, TOLLGATE_BIN } from './lib/paths.mjs';

const CORPUS = path.join(REPO, 'test', 'data', 'tokenizer');
const ENCODINGS = ['o200k_base', 'cl100k_base'];
const RUN_TIMEOUT_MS = 30000; // one tollgate run (a sanitizer build on the 48 KB long_runs.txt)
const T = { timeout: 2 * RUN_TIMEOUT_MS + 5000 };
const RANDOM_CASES = 200;
const RANDOM_SEED = process.env.TG_TOKENIZER_SEED !== undefined
  ? Number(process.env.TG_TOKENIZER_SEED) >>> 0
  : 0x7011_6a7e;

// ---------------------------------------------------------------- running

/** Runs `tollgate ARGS...`, stdin from `input` (Buffer) or /dev/null. */
function tollgate(args, { input = null, timeoutMs = RUN_TIMEOUT_MS } = {}) {
  return new Promise((resolve, reject) => {
    try {
      fs.accessSync(TOLLGATE_BIN, fs.constants.X_OK);
    } catch {
      reject(new Error(`tollgate binary not found or not executable at ${TOLLGATE_BIN} (build it, or set TOLLGATE_BIN)`));
      return;
    }
    const child = spawn(TOLLGATE_BIN, args, { stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    const out = [];
    const err = [];
    let timedOut = false;
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => err.push(d));
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code, signal, timedOut,
        stdout: Buffer.concat(out).toString('latin1'),
        stderr: Buffer.concat(err).toString('utf8'),
      });
    });
    if (input) {
      child.stdin.on('error', () => {}); // EPIPE if it exits early; the exit code says why
      child.stdin.end(input);
    }
  });
}

function what(args, r) {
  const why = r.timedOut ? `killed after ${RUN_TIMEOUT_MS} ms` : r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
  return `tollgate ${args.join(' ')}: ${why}; stderr: ${r.stderr.trim().slice(0, 2000) || '(empty)'}`;
}

/** Runs tokenize and parses "id id ...\n" strictly. */
async function tokenizeIds(encoding, file, input = null) {
  const args = ['tokenize', '--encoding', encoding, file];
  const r = await tollgate(args, { input });
  assert.equal(r.code, 0, what(args, r));
  assert.match(r.stdout, /^(?:\d+(?: \d+)*)?\n$/, `${args.join(' ')}: output must be ids separated by single spaces and one trailing newline; got ${JSON.stringify(r.stdout.slice(0, 200))}${r.stdout.length > 200 ? '...' : ''}`);
  const line = r.stdout.slice(0, -1);
  return line === '' ? [] : line.split(' ').map(Number);
}

async function tokenizeCount(encoding, file) {
  const args = ['tokenize', '--encoding', encoding, '--count', file];
  const r = await tollgate(args);
  assert.equal(r.code, 0, what(args, r));
  assert.match(r.stdout, /^\d+\n$/, `${args.join(' ')}: output must be one number and a newline; got ${JSON.stringify(r.stdout.slice(0, 200))}`);
  return Number(r.stdout.trim());
}

/** Fails unless `tokenize` works at all, so that the error-exit tests below
 * cannot pass on a binary that rejects the whole subcommand. */
async function requireTokenize() {
  const args = ['tokenize', '--encoding', 'o200k_base', '--count', path.join(CORPUS, 'en_prose.txt')];
  const r = await tollgate(args);
  assert.equal(r.code, 0, `the tokenize subcommand must work first: ${what(args, r)}`);
}

// ---------------------------------------------------------------- oracle

const encs = {};
const decoder = new TextDecoder('utf-8', { fatal: true });

/** Bytes as readable text: JSON string if valid UTF-8, else with \xHH escapes. */
function showBytes(u8) {
  try {
    return JSON.stringify(decoder.decode(u8));
  } catch {
    let s = '';
    for (const b of u8) s += b >= 0x20 && b < 0x7f && b !== 0x22 && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
    return `b"${s}"`;
  }
}

function decodeOrNull(enc, ids) {
  try {
    return enc.decode(Uint32Array.from(ids));
  } catch {
    return null;
  }
}

function showIds(enc, ids) {
  return ids.map((id) => {
    const b = decodeOrNull(enc, [id]);
    return `${id}=${b ? showBytes(b) : '<not a token>'}`;
  }).join(' ');
}

/** null when equal, else a multi-line explanation of the first difference. */
function mismatch(label, encoding, text, ours, want) {
  const n = Math.min(ours.length, want.length);
  let i = 0;
  while (i < n && ours[i] === want[i]) i++;
  if (i === n && ours.length === want.length) return null;
  const enc = encs[encoding];
  const lo = Math.max(0, i - 5);
  const hi = i + 6;
  const bytes = Buffer.from(text, 'utf8');
  const off = decodeOrNull(enc, want.slice(0, i))?.length ?? 0;
  let a = Math.max(0, off - 60);
  let b = Math.min(bytes.length, off + 60);
  while (a > 0 && (bytes[a] & 0xc0) === 0x80) a--; // whole characters only
  while (b < bytes.length && (bytes[b] & 0xc0) === 0x80) b++;
  const oursHere = decodeOrNull(enc, ours.slice(i, hi));
  const wantHere = decodeOrNull(enc, want.slice(i, hi));
  return [
    `${label} [${encoding}]: ids differ at index ${i}; tollgate gave ${ours.length} ids, tiktoken ${want.length}`,
    `  first difference at byte ${off} of the sanitized text (${bytes.length} bytes); the text around it, <HERE> marking that byte:`,
    `    ${showBytes(bytes.subarray(a, off))} <HERE> ${showBytes(bytes.subarray(off, b))}`,
    `  text from there, tollgate: ${oursHere ? showBytes(oursHere) : '<ids that are not tokens>'}`,
    `  text from there, tiktoken: ${wantHere ? showBytes(wantHere) : '?'}`,
    `  tollgate ids [${lo}..${hi}): ${showIds(enc, ours.slice(lo, hi))}`,
    `  tiktoken ids [${lo}..${hi}): ${showIds(enc, want.slice(lo, hi))}`,
  ].join('\n');
}

function oracle(encoding, buf) {
  const text = buf.toString('utf8');
  return { text, want: Array.from(encs[encoding].encode_ordinary(text)) };
}

// ---------------------------------------------------------------- corpus

const files = fs.readdirSync(CORPUS).filter((f) => f !== 'README.md' && !f.startsWith('.')).sort();
const idsCache = new Map(); // "encoding/file" -> our ids, so the decode test needs no second run

describe('tollgate tokenize against tiktoken 1.0.22', () => {
  before(() => {
    for (const e of ENCODINGS) encs[e] = get_encoding(e);
  });
  after(() => {
    for (const e of ENCODINGS) encs[e]?.free();
  });

  it('the corpus is there', () => {
    assert.ok(files.length >= 20, `expected the corpus in ${CORPUS}, found ${files.length} files`);
    assert.ok(files.includes('empty.txt') && files.includes('invalid_utf8.bin'));
  });

  it('tollgate has the tokenize command', T, async () => {
    await requireTokenize();
  });

  for (const encoding of ENCODINGS) {
    describe(encoding, () => {
      for (const f of files) {
        const file = path.join(CORPUS, f);
        it(`${f}: ids and --count equal encode_ordinary`, T, async () => {
          const buf = fs.readFileSync(file);
          const { text, want } = oracle(encoding, buf);
          const ours = await tokenizeIds(encoding, file);
          idsCache.set(`${encoding}/${f}`, ours);
          const m = mismatch(f, encoding, text, ours, want);
          if (m) assert.fail(m);
          const count = await tokenizeCount(encoding, file);
          assert.equal(count, want.length, `${f} [${encoding}]: --count printed ${count}, the ids are ${want.length}`);
        });

        it(`${f}: tiktoken decodes our ids to the sanitized bytes`, T, async () => {
          const buf = fs.readFileSync(file);
          const sanitized = Buffer.from(buf.toString('utf8'), 'utf8');
          const ours = idsCache.get(`${encoding}/${f}`) ?? await tokenizeIds(encoding, file);
          let got;
          try {
            got = Buffer.from(encs[encoding].decode(Uint32Array.from(ours)));
          } catch (e) {
            assert.fail(`${f} [${encoding}]: tiktoken cannot decode our ids (${e?.message ?? e}); max id ${Math.max(...ours)}`);
          }
          if (!got.equals(sanitized)) {
            let i = 0;
            while (i < got.length && i < sanitized.length && got[i] === sanitized[i]) i++;
            assert.fail(`${f} [${encoding}]: decode(ids) differs from the ${buf.equals(sanitized) ? '' : 'sanitized '}file at byte ${i} ` +
              `(${got.length} vs ${sanitized.length} bytes)\n  decoded: ${showBytes(got.subarray(Math.max(0, i - 40), i + 40))}\n` +
              `  file:    ${showBytes(sanitized.subarray(Math.max(0, i - 40), i + 40))}`);
          }
        });
      }

      it('stdin (-) gives the same ids as the file', T, async () => {
        for (const f of ['invalid_utf8.bin', 'en_prose.txt', 'empty.txt']) {
          const buf = fs.readFileSync(path.join(CORPUS, f));
          const { text, want } = oracle(encoding, buf);
          const ours = await tokenizeIds(encoding, '-', buf);
          const m = mismatch(`stdin <${f}`, encoding, text, ours, want);
          if (m) assert.fail(m);
        }
      });
    });
  }

  // ---------------------------------------------------------------- random

  it(`${RANDOM_CASES} random strings (seed ${RANDOM_SEED}), encodings alternating`, { timeout: 60000 }, async (t) => {
    t.diagnostic(`seed ${RANDOM_SEED} (set TG_TOKENIZER_SEED to replay another)`);
    const started = Date.now();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tollgate-tok-'));
    const cases = randomCases(RANDOM_SEED, RANDOM_CASES);
    const failures = [];
    let next = 0;
    const worker = async () => {
      while (next < cases.length) {
        const k = next++;
        const file = path.join(dir, `case-${String(k).padStart(3, '0')}.bin`);
        fs.writeFileSync(file, cases[k]);
        const encoding = ENCODINGS[k % ENCODINGS.length];
        const { text, want } = oracle(encoding, cases[k]);
        let m;
        try {
          m = mismatch(`random case ${k} (seed ${RANDOM_SEED}, input kept in ${file})`, encoding, text, await tokenizeIds(encoding, file), want);
        } catch (e) {
          m = `random case ${k} (seed ${RANDOM_SEED}, input kept in ${file}) [${encoding}]: ${e.message}`;
        }
        if (m) failures.push(m);
        if (failures.length >= 5) return; // enough to debug; do not wait for 400 failures
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(4, os.availableParallelism?.() ?? os.cpus().length)) }, worker));
    t.diagnostic(`${cases.length} cases, ${cases.reduce((a, c) => a + c.length, 0)} bytes, ${Date.now() - started} ms`);
    if (failures.length) {
      assert.fail(`${failures.length}${failures.length >= 5 ? '+' : ''} random case(s) differ; inputs kept in ${dir}\n\n${failures.slice(0, 3).join('\n\n')}`);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  // ---------------------------------------------------------------- options and errors

  it('--bench N prints tokens, passes, seconds, tokens_per_sec', T, async () => {
    const file = path.join(CORPUS, 'en_prose.txt');
    const { want } = oracle('cl100k_base', fs.readFileSync(file));
    const args = ['tokenize', '--encoding', 'cl100k_base', '--bench', '3', file];
    const r = await tollgate(args);
    assert.equal(r.code, 0, what(args, r));
    const m = /^tokens=(\d+) passes=(\d+) seconds=(\d+(?:\.\d+)?(?:e[-+]?\d+)?) tokens_per_sec=(\d+(?:\.\d+)?(?:e[-+]?\d+)?)\n$/.exec(r.stdout);
    assert.ok(m, `--bench output: ${JSON.stringify(r.stdout)}`);
    assert.equal(Number(m[1]), want.length, 'tokens= is the token count of one pass');
    assert.equal(Number(m[2]), 3);
    assert.ok(Number(m[3]) > 0 && Number(m[4]) > 0, r.stdout);
  });

  it('a missing data directory exits 2 with a message on stderr', T, async () => {
    await requireTokenize();
    for (const encoding of ENCODINGS) {
      const args = ['tokenize', '--encoding', encoding, '--data-dir', '/nonexistent/tollgate-tokenizer-data', path.join(CORPUS, 'en_prose.txt')];
      const r = await tollgate(args);
      assert.equal(r.code, 2, what(args, r));
      assert.ok(r.stderr.trim().length > 0, 'it says why on stderr');
      assert.equal(r.stdout, '', 'no ids on stdout');
    }
  });

  it('usage errors exit 1 with a message', T, async () => {
    await requireTokenize();
    for (const args of [
      ['tokenize'],
      ['tokenize', '--encoding', 'no_such_encoding', path.join(CORPUS, 'en_prose.txt')],
      ['tokenize', '--bench', 'lots', path.join(CORPUS, 'en_prose.txt')],
    ]) {
      const r = await tollgate(args);
      assert.equal(r.code, 1, what(args, r));
      assert.ok(r.stderr.trim().length > 0, `${args.join(' ')}: it says why on stderr`);
    }
  });

  it('a file that does not exist fails with a message', T, async () => {
    await requireTokenize();
    const args = ['tokenize', '--encoding', 'o200k_base', path.join(CORPUS, 'no-such-file.txt')];
    const r = await tollgate(args);
    assert.ok(r.code !== 0 && r.code !== null, what(args, r));
    assert.ok(r.stderr.trim().length > 0, 'it says why on stderr');
  });
});

// ---------------------------------------------------------------- random input

/** mulberry32: a small, well-mixed 32-bit PRNG; same seed, same cases. */
function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n) => Math.floor(next() * n); // 0..n-1
  const pick = (arr) => arr[int(arr.length)];
  return { next, int, pick };
}

// Code point ranges whose assignments did not change after Unicode 13, so a
// difference here is a tokenizer bug, not a Unicode-version difference
// (characters new in Unicode 14..16 are in unicode_recent.txt instead).
const BLOCKS = [
  [0x20, 0x7e], [0x20, 0x7e], [0x20, 0x7e], [0xa0, 0xff], [0x100, 0x24f], [0x250, 0x2ff], [0x300, 0x36f],
  [0x370, 0x3ff], [0x400, 0x4ff], [0x531, 0x58a], [0x591, 0x5f4], [0x600, 0x6ff], [0x900, 0x97f], [0x980, 0x9fe],
  [0xe01, 0xe5b], [0x10a0, 0x10ff], [0x1100, 0x11ff], [0x1e00, 0x1eff], [0x1f00, 0x1ffe], [0x2000, 0x2064],
  [0x2070, 0x209c], [0x20a0, 0x20bf], [0x20d0, 0x20f0], [0x2100, 0x218b], [0x2190, 0x23ff], [0x2500, 0x27bf],
  [0x3000, 0x303f], [0x3041, 0x30ff], [0x4e00, 0x9fef], [0xac00, 0xd7a3], [0xe000, 0xe0ff], [0xfb00, 0xfb4f],
  [0xfe00, 0xfe0f], [0xfe70, 0xfefc], [0xff01, 0xffee], [0x1d400, 0x1d7ff], [0x1f1e6, 0x1f1ff],
  [0x1f300, 0x1f64f], [0x1f680, 0x1f6c5], [0x1f900, 0x1f9ff], [0x20000, 0x2a6dd], [0xe0020, 0xe007f], [0xe0100, 0xe01ef],
  [0x0, 0x1f], [0x7f, 0x9f],
];
const SPACES = [' ', ' ', ' ', '\t', '\n', '\r\n', '\r', '\u000b', '\u000c', '\u0085', '\u00a0', '\u1680', '\u180e',
  '\u2003', '\u2009', '\u200b', '\u2028', '\u2029', '\u202f', '\u3000', '\ufeff'];
const WORDS = ['the', 'The', 'THE', 'hello', 'World', 'camelCase', 'XMLHttp', 'naïve', 'Ǆemal', 'ǅ', 'straße', 'ſ', 'İ',
  'Москва', 'ΣΟΦΟΣ', '日本語', 'カタカナー', '한국어', 'مرحبا', 'שָׁלוֹם', 'नमस्ते', 'สวัสดี', 'e\u0301', '😀', '👍🏽', '👨\u200d👩\u200d👧',
  '🇯🇵', '1\ufe0f\u20e3', '<|endoftext|>', '<|fim_prefix|>', '{"a":1}', '\\n', '://', '...', '--', '!!', '¿', '’'];
const SUFFIXES = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M", "'LL", "'lL", "'D", "'ſ", '’s', "'", "''"];
const BAD = [[0x80], [0xbf], [0xc3], [0xe2, 0x82], [0xf0, 0x9f, 0x98], [0xc0, 0x80], [0xe0, 0x80, 0x80], [0xed, 0xa0, 0x80],
  [0xf4, 0x90, 0x80, 0x80], [0xf5], [0xfe], [0xff], [0xf8, 0x88, 0x80, 0x80, 0x80]];

let corpusTexts = null;
function corpusFragments() {
  if (!corpusTexts) {
    // unicode_recent.txt is left out for the same reason as the newer blocks
    corpusTexts = files.filter((f) => f !== 'unicode_recent.txt')
      .map((f) => Array.from(fs.readFileSync(path.join(CORPUS, f)).toString('utf8'))).filter((cps) => cps.length > 0);
  }
  return corpusTexts;
}

function randomCases(seed, n) {
  const r = prng(seed);
  const texts = corpusFragments();
  const cases = [];
  for (let k = 0; k < n; k++) {
    const parts = [];
    const pieces = 1 + r.int(k % 10 === 0 ? 60 : 16);
    for (let p = 0; p < pieces; p++) {
      switch (r.int(8)) {
        case 0: { // a slice of a corpus file (by code points)
          const cps = r.pick(texts);
          const len = 1 + r.int(r.next() < 0.2 ? 600 : 80);
          const at = r.int(Math.max(1, cps.length - len));
          parts.push(Buffer.from(cps.slice(at, at + len).join(''), 'utf8'));
          break;
        }
        case 1: case 2: { // random code points from one block
          const [lo, hi] = r.pick(BLOCKS);
          let s = '';
          for (let i = 1 + r.int(12); i > 0; i--) s += String.fromCodePoint(lo + r.int(hi - lo + 1));
          parts.push(Buffer.from(s, 'utf8'));
          break;
        }
        case 3: { // whitespace run
          let s = '';
          for (let i = 1 + r.int(r.next() < 0.3 ? 40 : 4); i > 0; i--) s += r.next() < 0.6 ? ' ' : r.pick(SPACES);
          parts.push(Buffer.from(s, 'utf8'));
          break;
        }
        case 4: { // a word, maybe with a contraction
          parts.push(Buffer.from(r.pick(WORDS) + (r.next() < 0.4 ? r.pick(SUFFIXES) : ''), 'utf8'));
          break;
        }
        case 5: { // digits, sometimes with a separator
          let s = '';
          for (let i = 1 + r.int(r.next() < 0.2 ? 30 : 6); i > 0; i--) s += String(r.int(10));
          if (r.next() < 0.3) s += r.pick(['.', ',', '٫', ' ', '']) + String(r.int(1000));
          parts.push(Buffer.from(s, 'utf8'));
          break;
        }
        case 6: { // invalid UTF-8 bytes (rarely) or punctuation
          if (r.next() < 0.35) parts.push(Buffer.from(r.pick(BAD)));
          else parts.push(Buffer.from(r.pick(['.', ',', '!', '?', '"', "'", '(', ')', '{', '}', '/', '\\', '-', '_', '@', '#', '$', '%', '&', '*', '://', '->', '=>', '/*', '*/', '//']), 'utf8'));
          break;
        }
        default: { // ASCII word of random case
          let s = '';
          for (let i = 1 + r.int(12); i > 0; i--) s += String.fromCharCode((r.next() < 0.3 ? 65 : 97) + r.int(26));
          parts.push(Buffer.from(s, 'utf8'));
        }
      }
    }
    cases.push(Buffer.concat(parts));
  }
  return cases;
}
