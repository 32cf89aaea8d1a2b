#!/usr/bin/env node
// gen_unicode_delta.mjs - writes billing/unicode_delta.h (not part of the build).
//
//   node billing/tools/gen_unicode_delta.mjs [--tiktoken DIR] [--out FILE] [--check]
//
// tiktoken's pre-tokenizer regex (Rust regex-syntax, compiled to wasm) has
// newer Unicode tables than the system PCRE2 10.42 (Unicode 14). For every
// property the encodings' patterns use (L Lu Ll Lt Lm Lo M N), this matches
// each code point U+0000..U+10FFFF (no surrogates) against \p{X} in both
// engines and writes the code points tiktoken puts in \p{X} and PCRE2 does
// not, as PCRE2 class items, for pcre2_pattern() in billing/tokenizer.c.
//
// tiktoken's view: a Tiktoken built with the 256 single-byte ranks and the
//   pattern \p{X}; encode_ordinary keeps only the regex matches, so decoding
//   the ids of a string of all code points gives exactly the members.
// PCRE2's view: gen_unicode_delta.c (compiled here with cc and pkg-config),
//   \p{X} with PCRE2_UTF|PCRE2_UCP.
// Node's own regex (ICU) is a cross-check only, printed on stderr.
//
// Fails if PCRE2 has a code point in \p{X} that tiktoken has not (a
// category change; a class cannot subtract), or if tiktoken's \s is not
// TOK_WS in billing/tokenizer.c. --check compares with the existing file
// instead of writing it (exit 1 if it differs).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const PROPS = ['L', 'Lu', 'Ll', 'Lt', 'Lm', 'Lo', 'M', 'N'];

// One code point first assigned (or, 17.0, recategorised) in each version,
// with its class there: the probe for tiktoken's Unicode version.
const MARKERS = [
    ['14.0', 0x10570, 'Lu'], // VITHKUQI CAPITAL LETTER A
    ['15.0', 0x1d2c0, 'N'], // KAKTOVIK NUMERAL ZERO
    ['15.1', 0x2ebf0, 'Lo'], // CJK Extension I
    ['16.0', 0x1ccf0, 'N'], // OUTLINED DIGIT ZERO
    ['17.0', 0x323b0, 'Lo'], // CJK Extension J
    ['17.0', 0x0295, 'Lo'], // LATIN LETTER PHARYNGEAL VOICED FRICATIVE, Ll before 17.0
];

function die(msg) {
    process.stderr.write(`gen_unicode_delta: ${msg}\n`);
    process.exit(2);
}

function args() {
    const a = { tiktoken: null, out: path.join(REPO, 'billing', 'unicode_delta.h'), check: false };
    const v = process.argv.slice(2);
    for (let i = 0; i < v.length; i++) {
        if (v[i] === '--tiktoken' && i + 1 < v.length) a.tiktoken = v[++i];
        else if (v[i] === '--out' && i + 1 < v.length) a.out = v[++i];
        else if (v[i] === '--check') a.check = true;
        else die(`usage: gen_unicode_delta.mjs [--tiktoken DIR] [--out FILE] [--check]`);
    }
    if (!a.tiktoken) {
        const cands = [path.join(REPO, 'test', 'integration', 'node_modules', 'tiktoken')];
        for (const d of fs.readdirSync(REPO).filter((d) => d.startsWith('build')).sort())
            cands.push(path.join(REPO, d, 'tokenizer', 'npm', 'node_modules', 'tiktoken'));
        a.tiktoken = cands.find((d) => fs.existsSync(path.join(d, 'package.json')));
        if (!a.tiktoken) die('tiktoken not found (npm ci in test/integration, or --tiktoken DIR)');
    }
    return a;
}

// ---------------------------------------------------------------- sets

const ALL = [];
for (let c = 0; c < 0x110000; c++) if (c < 0xd800 || c > 0xdfff) ALL.push(c);

function allText() {
    const parts = [];
    for (let i = 0; i < ALL.length; i += 8192) parts.push(String.fromCodePoint(...ALL.slice(i, i + 8192)));
    return parts.join('');
}

function tiktokenSets(dir) {
    const { Tiktoken } = createRequire(path.join(dir, 'package.json'))(dir);
    const ranks = [];
    for (let b = 0; b < 256; b++) ranks.push(`${Buffer.from([b]).toString('base64')} ${b}`);
    const bpe = ranks.join('\n');
    const text = allText();
    const members = (pat) => {
        const enc = new Tiktoken(bpe, {}, pat);
        try {
            const s = Buffer.from(enc.decode(enc.encode_ordinary(text))).toString('utf8');
            return new Set(Array.from(s, (ch) => ch.codePointAt(0)));
        } finally {
            enc.free();
        }
    };
    const sets = {};
    for (const p of PROPS) sets[p] = members(`\\p{${p}}`);
    sets.s = members('\\s');
    return sets;
}

function pcre2Sets() {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gen-unicode-delta-'));
    try {
        const exe = path.join(tmp, 'dump');
        const flags = execFileSync('pkg-config', ['--cflags', '--libs', 'libpcre2-8'], { encoding: 'utf8' })
            .trim().split(/\s+/).filter(Boolean);
        execFileSync('cc', ['-O2', '-o', exe, path.join(HERE, 'gen_unicode_delta.c'), ...flags], { stdio: 'inherit' });
        const lines = execFileSync(exe, PROPS, { encoding: 'utf8', maxBuffer: 64 << 20 }).trim().split('\n');
        const m = /^pcre2 (\S+) \S+ unicode (\S+)$/.exec(lines[0]);
        if (!m) die(`unexpected dumper output: ${lines[0]}`);
        const sets = {};
        for (const l of lines.slice(1)) {
            const [p, ...rs] = l.split(' ');
            const set = new Set();
            for (const r of rs) {
                const [lo, hi] = r.split('-').map((h) => parseInt(h, 16));
                for (let c = lo; c <= hi; c++) set.add(c);
            }
            sets[p] = set;
        }
        return { version: m[1], unicode: m[2], sets };
    } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
    }
}

function nodeSet(prop) {
    const re = new RegExp(`^\\p{${prop}}$`, 'u');
    return new Set(ALL.filter((c) => re.test(String.fromCodePoint(c))));
}

// TOK_WS from tokenizer.c: "\\t-\\r\\x{20}..." -> set of code points.
function tokWs() {
    const src = fs.readFileSync(path.join(REPO, 'billing', 'tokenizer.c'), 'utf8');
    const m = /#define TOK_WS "([^"]*)"/.exec(src);
    if (!m) die('TOK_WS not found in billing/tokenizer.c');
    const one = (t) => {
        const esc = { '\\\\t': 9, '\\\\n': 10, '\\\\v': 11, '\\\\f': 12, '\\\\r': 13 };
        if (t in esc) return esc[t];
        const h = /^\\\\x\{([0-9A-Fa-f]+)\}$/.exec(t);
        if (!h) die(`TOK_WS: cannot read item ${t}`);
        return parseInt(h[1], 16);
    };
    const items = m[1].match(/\\\\(?:x\{[0-9A-Fa-f]+\}|[a-z])(?:-\\\\(?:x\{[0-9A-Fa-f]+\}|[a-z]))?/g);
    if (!items || items.join('') !== m[1]) die('TOK_WS: unexpected syntax');
    const set = new Set();
    for (const it of items) {
        const [a, b = a] = it.split('-');
        for (let c = one(a); c <= one(b); c++) set.add(c);
    }
    return set;
}

// ---------------------------------------------------------------- output

const minus = (a, b) => [...a].filter((c) => !b.has(c)).sort((x, y) => x - y);
const sameSet = (a, b) => a.size === b.size && [...a].every((c) => b.has(c));

function ranges(cps) {
    const r = [];
    for (const c of cps) {
        if (r.length && r[r.length - 1][1] === c - 1) r[r.length - 1][1] = c;
        else r.push([c, c]);
    }
    return r;
}

const hex = (c) => c.toString(16).toUpperCase().padStart(4, '0');
const showRanges = (cps) => ranges(cps).map(([a, b]) => (a === b ? hex(a) : `${hex(a)}..${hex(b)}`)).join(' ');

function macro(name, cps) {
    const items = ranges(cps).map(([a, b]) => (a === b ? `\\\\x{${hex(a)}}` : `\\\\x{${hex(a)}}-\\\\x{${hex(b)}}`));
    if (!items.length) return `#define ${name} ""\n`;
    const lines = [];
    let cur = '';
    for (const it of items) {
        if (cur && cur.length + it.length > 84) {
            lines.push(cur);
            cur = '';
        }
        cur += it;
    }
    lines.push(cur);
    return `#define ${name} \\\n${lines.map((l) => `    "${l}"`).join(' \\\n')}\n`;
}

function main() {
    const a = args();
    const tkPkg = JSON.parse(fs.readFileSync(path.join(a.tiktoken, 'package.json'), 'utf8'));
    const wasm = fs.readFileSync(path.join(a.tiktoken, 'tiktoken_bg.wasm')).toString('latin1');
    const rs = /regex-syntax-(\d+\.\d+\.\d+)/.exec(wasm);
    const tk = tiktokenSets(a.tiktoken);
    const pc = pcre2Sets();

    // tiktoken's Unicode version: the newest marker it classifies as that version does.
    let tkUnicode = null;
    for (const [ver, cp, cls] of MARKERS) {
        const ok = tk[cls].has(cp);
        process.stderr.write(`marker ${ver} U+${hex(cp)} \\p{${cls}}: ${ok ? 'yes' : 'no'}\n`);
        if (ok) tkUnicode = ver;
        else break;
    }
    if (!tkUnicode) die('tiktoken does not know Unicode 14 characters?');

    const add = {};
    const counts = [];
    for (const p of PROPS) {
        add[p] = minus(tk[p], pc.sets[p]);
        const rem = minus(pc.sets[p], tk[p]);
        if (rem.length) die(`PCRE2 has \\p{${p}} code points tiktoken has not: ${showRanges(rem)}`);
        counts.push(`${p} ${add[p].length}`);
        const nd = nodeSet(p);
        process.stderr.write(`\\p{${p}}: tiktoken ${tk[p].size}, PCRE2 ${pc.sets[p].size} (+${add[p].length}), ` +
            `node ${nd.size}; node only: ${showRanges(minus(nd, tk[p])) || '-'}; tiktoken only: ` +
            `${showRanges(minus(tk[p], nd)) || '-'}\n`);
    }
    const ws = tokWs();
    if (!sameSet(ws, tk.s)) die(`tiktoken's \\s (${showRanges([...tk.s].sort((x, y) => x - y))}) is not TOK_WS`);
    if (!sameSet(ws, nodeSet('White_Space'))) process.stderr.write('note: node White_Space differs from TOK_WS\n');

    const out = `/* unicode_delta.h - GENERATED by billing/tools/gen_unicode_delta.mjs; do not edit.
 *
 * tiktoken ${tkPkg.version} (Rust regex-syntax ${rs ? rs[1] : '?'}, Unicode ${tkUnicode} by probe) has
 * newer Unicode tables than PCRE2 ${pc.version} (Unicode ${pc.unicode}). TOK_UNI_DELTA_<X> lists
 * the code points in tiktoken's \\p{X} and not in PCRE2's, as PCRE2 class
 * items; pcre2_pattern() in tokenizer.c appends them to every \\p{X}. Found by
 * matching every code point against \\p{X} in both engines. No code point is
 * in PCRE2's \\p{X} and not in tiktoken's, and tiktoken's \\s is TOK_WS.
 * Code points: ${counts.join(', ')}.
 */
#ifndef TG_BILLING_UNICODE_DELTA_H
#define TG_BILLING_UNICODE_DELTA_H

${PROPS.map((p) => macro(`TOK_UNI_DELTA_${p}`, add[p])).join('\n')}
/* The smallest code point of any delta: text below it (no UTF-8 lead byte
 * of its length) matches the same with or without the deltas. */
#define TOK_UNI_DELTA_MIN 0x${hex(Math.min(...PROPS.flatMap((p) => add[p])))}

#endif
`;
    if (a.check) {
        const cur = fs.existsSync(a.out) ? fs.readFileSync(a.out, 'utf8') : '';
        if (cur !== out) {
            process.stderr.write(`${a.out} is out of date\n`);
            process.exit(1);
        }
        process.stderr.write(`${a.out} is up to date\n`);
        return;
    }
    fs.writeFileSync(a.out, out);
    process.stderr.write(`wrote ${a.out}\n`);
}

main();
