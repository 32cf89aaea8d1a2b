// signals.test.mjs - SIGTERM drains (not ready, in-flight streams finish,
// exit 0) and SIGHUP reloads the config (new keys in, removed keys out, open
// connections kept, an invalid file rejected with the old config in force).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { startGateway, baseConfig, RawConn, rawRequest, chatRequest, sleep, KEY, LIMITED_KEY } from './lib/gateway.mjs';
import { assertOpenAiError, assertCleanShutdown } from './lib/expect.mjs';

// No test here goes upstream: the provider `up` points at a closed port.
const NO_UPSTREAM = 'https://localhost:9/v1';
const NEW_KEY = 'tg-new-key-0123456789abcdef';

const models = (key) => ({ method: 'GET', path: '/v1/models', headers: { authorization: `Bearer ${key}` } });

/** /health/ready during a drain: 503, or no connection at all. */
async function readiness(port) {
  try {
    const r = await rawRequest(port, { method: 'GET', path: '/health/ready' }, { timeoutMs: 2000 });
    return r.status;
  } catch (err) {
    return `refused (${err.code ?? err.message})`;
  }
}

describe('SIGTERM', () => {
  let gw;
  before(async () => {
    gw = await startGateway(baseConfig(NO_UPSTREAM, (c) => {
      c.providers[1].mock = { tokens_per_sec: 20 };
      c.timeouts.drain = '10s';
    }));
  });
  after(async () => {
    await gw?.stop();
  });

  it('drains: not ready, the in-flight stream completes, then exit 0', { timeout: 30000 }, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      await conn.write(chatRequest({ model: 'mock-1', stream: true, extra: { max_tokens: 40 } }));
      const r = await conn.nextHead(5000);
      assert.equal(r.status, 200, 'stream started');
      await conn.waitUntil(() => r.bodyLength > 0, 5000, 'the first chunk');
      assert.equal(r.complete, false, 'the stream is still running (40 tokens at 20/s)');

      // An idle keep-alive connection, as a proxy's pool holds them.
      const idle = await RawConn.open(gw.port);
      await idle.write({ method: 'GET', path: '/health' });
      const first = await idle.next(5000);
      assert.equal(first.status, 200);
      assert.notEqual(first.headers.connection, 'close');

      const t0 = performance.now();
      const mark = gw.stderrLines.length;
      gw.signal('SIGTERM');
      // A request on the pooled connection just after the drain began (a
      // proxy that picked it from its pool) is answered, told to close, and
      // then the connection closes: it is not cut under the request.
      await gw.waitForStderr(/draining/i, 5000, mark);
      await idle.write(chatRequest({ model: 'mock-1', extra: { max_tokens: 2 } }));
      const onIdle = await idle.next(5000);
      assert.equal(onIdle.status, 200, onIdle.text());
      assert.equal(onIdle.headers.connection, 'close');
      assert.ok(await idle.waitClosed(2000), 'closed after the answer');
      // Readiness flips promptly; a probe on a fresh connection never sees 200 again.
      let ready;
      const deadline = performance.now() + 1500;
      do {
        await sleep(50);
        ready = await readiness(gw.port);
      } while (ready === 200 && performance.now() < deadline);
      assert.ok(ready === 503 || String(ready).startsWith('refused'), `/health/ready during the drain: ${ready}`);
      assert.equal(gw.exit, null, 'still running while the stream is in flight');

      await conn.waitBody(r, 15000);
      assert.ok(r.terminated && !r.truncated, 'the stream ends cleanly');
      const text = r.text();
      assert.ok(text.endsWith('data: [DONE]\n\n'), `ends with [DONE]: ${JSON.stringify(text.slice(-200))}`);
      const content = text.split('\n\n').filter((e) => e.startsWith('data: {'))
        .map((e) => JSON.parse(e.slice(6))).filter((j) => j.choices?.[0]?.delta?.content);
      assert.ok(content.length >= 10, `the stream carried its tokens (${content.length} content chunks)`);
      assert.ok(r.completeAt - t0 > 500, `the stream outlived the SIGTERM by ${Math.round(r.completeAt - t0)} ms`);

      const exit = await gw.waitExit(12000);
      assert.deepEqual(gw.sanitizerReports(), [], 'no sanitizer reports on stderr');
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.ok(gw.exitAt >= r.completeAt, 'exit only after the stream finished');
      assert.ok(gw.accessLog.some((e) => e.status === 200 && e.key_alias === 'test'), 'the drained call was logged');
    } finally {
      conn.destroy();
    }
  });
});

describe('SIGHUP', () => {
  let gw;
  // A long idle timeout: the kept connection must not be lost to it.
  const before_ = baseConfig(NO_UPSTREAM, (c) => {
    c.timeouts.idle = '30s';
  });
  const after_ = baseConfig(NO_UPSTREAM, (c) => {
    c.timeouts.idle = '30s';
    c.keys = [{ key: NEW_KEY, alias: 'new' }, { key: LIMITED_KEY, alias: 'limited', models: ['mock-1'] }];
  });
  before(async () => {
    gw = await startGateway(before_);
  });
  after(async () => {
    await gw?.stop();
  });

  it('reloads keys, keeps open connections, rejects a bad file', { timeout: 30000 }, async () => {
    const kept = await RawConn.open(gw.port);
    try {
      await kept.write(chatRequest({ model: 'mock-1', key: KEY }));
      assert.equal((await kept.next(5000)).status, 200);
      assertOpenAiError(await rawRequest(gw.port, models(NEW_KEY)), 401);

      // Reload: NEW_KEY in, KEY out.
      gw.writeConfig(after_);
      gw.signal('SIGHUP');
      let status;
      const deadline = performance.now() + 5000;
      do {
        await sleep(50);
        status = (await rawRequest(gw.port, models(NEW_KEY))).status;
      } while (status !== 200 && performance.now() < deadline);
      assert.equal(status, 200, 'the new key works after the reload');
      assertOpenAiError(await rawRequest(gw.port, models(KEY)), 401);

      assert.equal(kept.closed, false, 'the connection opened before the reload is still open');
      await kept.write(chatRequest({ model: 'mock-1', key: NEW_KEY }));
      assert.equal((await kept.next(5000)).status, 200, 'and it serves requests');
      await kept.write(chatRequest({ model: 'mock-1', key: KEY }));
      assertOpenAiError(await kept.next(5000), 401);

      // An invalid YAML file: rejected with a log line, the running config stays.
      for (const [what, bad] of [
        ['broken YAML', 'listen: "127.0.0.1:0"\nkeys: [\n  - {key: "unterminated\n'],
        ['a model on an unknown provider', baseConfig(NO_UPSTREAM, (c) => {
          c.timeouts.idle = '30s';
          c.models.push({ name: 'ghost', provider: 'no-such-provider' });
        })],
      ]) {
        const mark = gw.stderrLines.length;
        gw.writeConfig(bad);
        gw.signal('SIGHUP');
        const line = await gw.waitForStderr(/^(?=.*(config|reload|yaml))(?=.*(reject|invalid|fail|error)).*/i, 5000, mark);
        assert.ok(line, `a rejection line for ${what}`);
        await sleep(200);
        assert.equal(gw.exit, null, `still running after ${what}`);
        assert.equal((await rawRequest(gw.port, models(NEW_KEY))).status, 200, `the old config is in force after ${what}`);
        assertOpenAiError(await rawRequest(gw.port, models(KEY)), 401);
      }
      assert.equal(kept.closed, false);
      await kept.write({ method: 'GET', path: '/health' });
      assert.equal((await kept.next(5000)).status, 200);
    } finally {
      kept.destroy();
    }
  });

  it('exits 0 on SIGTERM, with no sanitizer report', { timeout: 20000 }, async () => {
    await assertCleanShutdown(gw);
  });
});
