// security.test.mjs - what an attacker's request cannot do:
//   1. request smuggling: Content-Length with Transfer-Encoding, two
//      different Content-Lengths, an obs-folded header are refused with 400
//      and the connection closed, and nothing reaches the upstream; a
//      request pipelined after a chunked body is a request of its own;
//   2. header injection: CR/LF in a model name (JSON-escaped in the body)
//      never becomes an upstream header, also on Gemini, whose model name
//      goes into the URL path;
//   3. hostile JSON: 100,000 nested arrays and a 1 MiB string are answered
//      (400 or a normal answer), quickly, and the gateway lives on;
//   4. secrets (a provider key, the admin master key, a proxy password)
//      never appear in logs, /metrics, the health page or error bodies.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { startUpstream } from './lib/upstream.mjs';
import { startGateway, baseConfig, KEY, UPSTREAM_KEY, RawConn } from './lib/gateway.mjs';
import { TLS_DIR } from './lib/paths.mjs';

const T = { timeout: 20000 };
const PROVIDER_SECRET = 'sk-provider-secret-7f3a9c';
const MASTER = 'tg-master-secret-0123456789abcdef';
const PROXY_PASSWORD = 'proxy-pass-51b2e8';

/** Sends raw bytes on a new connection; resolves {text, closed} after the server answers or closes. */
function raw(port, bytes, waitMs = 1500) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let text = '';
    const done = (closed) => {
      s.destroy();
      resolve({ text, closed });
    };
    const timer = setTimeout(() => done(false), waitMs);
    s.on('data', (d) => { text += d.toString('latin1'); });
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ text, closed: true });
    });
    s.on('error', () => {});
    s.write(bytes);
  });
}

describe('security', () => {
  let up;
  let gw;
  before(async () => {
    up = await startUpstream({ apiKey: PROVIDER_SECRET });
    gw = await startGateway(baseConfig(up.baseUrl, (cfg) => {
      cfg.providers[0].api_key = PROVIDER_SECRET;
      cfg.providers.push(
        { name: 'gem', type: 'gemini', base_url: `https://localhost:${up.port}/v1beta`, api_key: PROVIDER_SECRET, ca_file: path.join(TLS_DIR, 'ca.crt') },
        // a proxy that is not there: its password must not leak either
        { name: 'viaproxy', type: 'openai_compatible', base_url: up.baseUrl, api_key: PROVIDER_SECRET, ca_file: path.join(TLS_DIR, 'ca.crt'), proxy: `http://user:${PROXY_PASSWORD}@127.0.0.1:9` },
      );
      cfg.models.push({ name: 'ge/*', provider: 'gem' }, { name: 'px', provider: 'viaproxy', model: 'gpt-4o-mini' });
      cfg.admin = { master_key: MASTER };
    }));
    void UPSTREAM_KEY;
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
  });

  const chat = (body) => `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: application/json\r\n`;
  const BODY = '{"model":"fx-chat","messages":[{"role":"user","content":"Hi"}]}';

  /* ------------------------------------------------------ 1. smuggling */

  const smuggles = [
    ['Content-Length and Transfer-Encoding together',
      `${chat()}Content-Length: ${BODY.length}\r\nTransfer-Encoding: chunked\r\n\r\n${BODY.length.toString(16)}\r\n${BODY}\r\n0\r\n\r\n`],
    ['two different Content-Lengths',
      `${chat()}Content-Length: ${BODY.length}\r\nContent-Length: 5\r\n\r\n${BODY}`],
    ['an obs-folded header',
      `${chat()}X-Folded: a\r\n b\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY}`],
    ['a second request pipelined after a chunked body with a trailer',
      `${chat()}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\nGET /admin/providers/health HTTP/1.1\r\nHost: x\r\n\r\n`],
  ];
  for (const [what, bytes] of smuggles) {
    it(`${what}: ${what.startsWith('a second') ? 'two separate requests' : '400, connection closed, nothing upstream'}`, T, async () => {
      const n = up.requests.length;
      const r = await raw(gw.port, bytes);
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(r.text)?.[1]);
      if (what.startsWith('a second request')) {
        // the chunked body (5 bytes, not JSON: a 400) with a trailer is one
        // request; what follows is never run with the first one's key: the
        // connection closes after the 400, or the next request is refused
        // for lacking an admin key
        const statuses = [...r.text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
        assert.equal(statuses[0], 400, r.text.slice(0, 400));
        // after it, the connection is closed or the next request is refused
        assert.ok(statuses.length === 1 ? r.closed : statuses[1] === 401, r.text.slice(0, 600));
        assert.ok(!/"routes"/.test(r.text), 'the health page was not served');
        return;
      }
      assert.equal(status, 400, r.text.slice(0, 300));
      assert.ok(r.closed, 'the connection is closed');
      assert.equal(up.requests.length, n, 'nothing reached the upstream');
    });
  }

  /* -------------------------------------------------- 2. header injection */

  it('CR/LF in a model name never becomes an upstream header (OpenAI body, Gemini path)', T, async () => {
    for (const model of ['fx/gpt-4o-mini\r\nX-Injected: 1', 'ge/gemini-2.5-flash\r\nX-Injected: 1']) {
      const n = up.requests.length;
      const r = await fetch(gw.url('/v1/chat/completions'), {
        method: 'POST',
        headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }] }),
      });
      await r.text();
      for (const q of up.requests.slice(n)) {
        assert.equal(q.headers['x-injected'], undefined, `${model}: injected header reached the upstream`);
        assert.ok(!/[\r\n]/.test(q.path), `${model}: CR/LF in the upstream path ${JSON.stringify(q.path)}`);
      }
      assert.ok(r.status === 404 || r.status === 400 || r.status >= 200, `status ${r.status}`);
    }
  });

  /* ---------------------------------------------------- 3. hostile JSON */

  it('100,000 nested arrays and a 1 MiB string: answered quickly, the gateway lives on', T, async () => {
    const deep = `{"model":"fx-chat","messages":${'['.repeat(100000)}${']'.repeat(100000)}}`;
    let t0 = performance.now();
    let r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body: deep,
    });
    assert.equal(r.status, 400, await r.text());
    assert.ok(performance.now() - t0 < 3000);
    const big = JSON.stringify({ model: 'mock-1', messages: [{ role: 'user', content: 'a'.repeat(1 << 20) }] });
    t0 = performance.now();
    r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body: big,
    });
    await r.text();
    assert.ok([200, 400, 413].includes(r.status), `status ${r.status}`);
    const h = await fetch(gw.url('/health'));
    assert.equal(h.status, 200);
  });

  /* ---------------------------------------------------- 4. secrets */

  it('no secret in logs, /metrics, the health page or error bodies', T, async () => {
    const bodies = [];
    const call = async (model, key = KEY) => {
      const r = await fetch(gw.url('/v1/chat/completions'), {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }] }),
      });
      bodies.push(await r.text());
    };
    await call('fx-chat');                       // served
    await call('fx/openai/error_401');           // the upstream refuses
    await call('px');                            // the proxy is not there
    await call('fx-chat', PROVIDER_SECRET);      // a provider key presented as a virtual key
    for (const path of ['/metrics', '/admin/providers/health', '/admin/organizations']) {
      const r = await fetch(gw.url(path), { headers: { authorization: `Bearer ${MASTER}` } });
      bodies.push(await r.text());
    }
    const everything = [...bodies, gw.stderrLines.join('\n'), JSON.stringify(gw.accessLog)].join('\n');
    for (const secret of [PROVIDER_SECRET, MASTER, PROXY_PASSWORD]) {
      assert.ok(!everything.includes(secret), `${secret} leaked`);
    }
  });

  it('clean exit', async () => {
    const exit = await gw.stop();
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.deepEqual(gw.sanitizerReports(), []);
  });
});
