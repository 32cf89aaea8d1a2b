// routing.test.mjs - retries, fallbacks and circuit breakers against the
// TLS mock upstream's scripted faults (docs/routing.md, providers/router.c):
//   1. for each failure before the first byte - 429 with retry-after, 500,
//      503, 529, connect refused, TLS failure, reset before the headers,
//      first byte slower than the timeout - the call is retried on its
//      route (routing.retries.attempts) and then served by the next one:
//      200, x-tollgate-attempts 3, x-tollgate-route the fallback, the
//      upstream saw exactly those attempts; retry-after is waited for;
//   2. what is not safe to retry is not: a 401 goes to the client at once,
//      a stream cut mid-way or stalled between chunks ends with an error
//      event and is metered, the fallback never called;
//   3. the circuit breaker: 3 failures open it, calls skip the route at
//      once, GET /admin/providers/health says so (with the last error), a
//      half-open probe after the cool-down, reopened by a failure and
//      closed by a success;
//   4. every route failing: the provider's own last error, in the caller's
//      format; with every circuit open the routes are tried anyway (a
//      breaker never refuses on its own).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { startUpstream } from './lib/upstream.mjs';
import { startGateway, baseConfig, newRequestId, sleep, KEY } from './lib/gateway.mjs';

const T = { timeout: 30000 };
const MASTER = 'tg-routing-master-key-0123456789';
const GOOD = { provider: 'up', model: 'gpt-4o-mini' };

/** A port with nothing listening (bound, then closed). */
async function closedPort() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

describe('routing: retries, fallbacks, circuit breakers', () => {
  let up;
  let badtls;
  let rst;
  let rstConns = 0;
  let gw;
  const fallback = (name, first) => ({ name, routes: [first, GOOD] });

  before(async () => {
    up = await startUpstream();
    badtls = await startUpstream({ cert: 'wronghost' });
    rst = net.createServer((s) => {
      rstConns += 1;
      s.resetAndDestroy();
    });
    await new Promise((r) => rst.listen(0, '127.0.0.1', r));
    const down = await closedPort();
    gw = await startGateway(baseConfig(up.baseUrl, (cfg) => {
      const base = cfg.providers[0];
      const like = (name, extra) => ({ ...base, name, ...extra, timeouts: { ...base.timeouts, ...(extra.timeouts ?? {}) } });
      cfg.providers.push(
        like('down', { base_url: `https://127.0.0.1:${down}/v1` }),
        like('badtls', { base_url: badtls.baseUrl }),
        like('rst', { base_url: `http://127.0.0.1:${rst.address().port}/v1` }),
        like('slow', { timeouts: { first_byte: '300ms' } }),
        like('idle', { timeouts: { idle: '300ms' } }),
      );
      cfg.routing = {
        retries: { attempts: 2, backoff: '20ms', backoff_max: '100ms', max_wait: '8s' },
        breaker: { failures: 3, cooldown: '1500ms', window: '30s', min_requests: 1000, error_rate: 90 },
      };
      cfg.admin = { master_key: MASTER };
      cfg.models.push(
        fallback('fb-429', { provider: 'up', model: 'openai/error_429?retryafter=1' }),
        fallback('fb-500', { provider: 'up', model: 'openai/chat_completion_response?status=500' }),
        fallback('fb-503', { provider: 'up', model: 'openai/chat_completion_response?status=503' }),
        fallback('fb-529', { provider: 'up', model: 'openai/chat_completion_response?status=529' }),
        fallback('fb-refused', { provider: 'down', model: 'gpt-4o-mini' }),
        fallback('fb-tls', { provider: 'badtls', model: 'gpt-4o-mini' }),
        fallback('fb-reset', { provider: 'rst', model: 'gpt-4o-mini' }),
        fallback('fb-slow', { provider: 'slow', model: 'openai/chat_completion_response?delay=3000' }),
        fallback('fb-401', { provider: 'up', model: 'openai/error_401' }),
        fallback('fb-cut', { provider: 'up', model: 'openai/chat_stream?reset=1000' }),
        fallback('fb-stall', { provider: 'idle', model: 'openai/chat_stream?stall=1000' }),
        fallback('cb', { provider: 'up', model: 'openai/chat_completion_response?status=500' }),
        { name: 'all-bad', routes: [{ provider: 'down', model: 'a' }, { provider: 'down', model: 'b' }] },
      );
    }));
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
    await badtls?.close();
    rst?.close();
  });

  async function call(model, { stream = false } = {}) {
    const id = newRequestId('route');
    const t0 = performance.now();
    const r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', 'x-request-id': id },
      body: JSON.stringify({ model, stream, max_tokens: 16, messages: [{ role: 'user', content: 'Hi' }] }),
    });
    const text = await r.text();
    return {
      status: r.status, text, id, ms: performance.now() - t0,
      attempts: r.headers.get('x-tollgate-attempts'), route: r.headers.get('x-tollgate-route'),
    };
  }
  const seenUpstream = (id, model) => up.requests.filter((q) => q.headers['x-request-id'] === id && (!model || q.body?.model === model)).length;

  /* ------------------------------------------------ 1. retried, then fallback */

  const cases = [
    ['fb-500', 'HTTP 500'],
    ['fb-503', 'HTTP 503'],
    ['fb-529', 'HTTP 529'],
    ['fb-refused', 'connect refused'],
    ['fb-tls', 'TLS failure'],
    ['fb-reset', 'reset before the headers'],
  ];
  for (const [model, what] of cases) {
    it(`${what}: retried once on its route, then served by the fallback`, T, async () => {
      const tls0 = badtls.tlsErrors.length;
      const rst0 = rstConns;
      const r = await call(model);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.attempts, '3');
      assert.equal(r.route, 'up/gpt-4o-mini');
      assert.equal(seenUpstream(r.id, 'gpt-4o-mini'), 1);
      if (model.startsWith('fb-5')) assert.equal(seenUpstream(r.id), 3);
      if (model === 'fb-tls') assert.equal(badtls.tlsErrors.length - tls0, 2);
      if (model === 'fb-reset') assert.equal(rstConns - rst0, 2);
      const line = await gw.accessLogFor(r.id);
      assert.equal(line.attempts, 3);
      assert.equal(line.provider, 'up');
      assert.equal(line.status, 200);
    });
  }

  it('429 with retry-after: 1 is retried after a second, then falls back', T, async () => {
    const r = await call('fb-429');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.attempts, '3');
    assert.equal(seenUpstream(r.id), 3);
    assert.ok(r.ms >= 1000, `waited ${r.ms} ms`);
    const at = up.requests.filter((q) => q.headers['x-request-id'] === r.id).map((q) => q.receivedAt);
    assert.ok(at[1] - at[0] >= 950, `retry ${at[1] - at[0]} ms after the 429`);
    assert.ok(at[2] - at[1] < 500, `the fallback at once: ${at[2] - at[1]} ms`);
  });

  it('a first byte slower than the timeout: retried, then the fallback, well before the slow answer', T, async () => {
    const r = await call('fb-slow');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.attempts, '3');
    assert.ok(r.ms < 2500, `${r.ms} ms`);
  });

  it('GET /metrics counts every attempt by route and outcome, retries and fallbacks', T, async () => {
    const r = await fetch(gw.url('/metrics'));
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
    const text = await r.text();
    const value = (line) => {
      const m = text.split('\n').find((l) => l.startsWith(`${line} `));
      assert.ok(m, `no sample ${line}`);
      return Number(m.slice(line.length + 1));
    };
    const bad = 'alias="fb-500",route="up/openai/chat_completion_response?status=500"';
    assert.equal(value(`tollgate_route_attempts_total{${bad},outcome="fail"}`), 2);
    assert.equal(value(`tollgate_route_retries_total{${bad}}`), 1);
    assert.equal(value(`tollgate_route_fallbacks_total{${bad}}`), 1);
    assert.equal(value('tollgate_route_attempts_total{alias="fb-500",route="up/gpt-4o-mini",outcome="ok"}'), 1);
    assert.equal(value(`tollgate_route_circuit_state{${bad}}`), 0);
    assert.match(text, /^# TYPE tollgate_route_attempts_total counter$/m);
    assert.match(text, /^tollgate_build_info\{version="[^"]+"\} 1$/m);
  });

  /* ------------------------------------------------- 2. not safe: not retried */

  it('a 401 is not retried: the client gets it at once, the fallback is never called', T, async () => {
    const r = await call('fb-401');
    assert.equal(r.status, 401, r.text);
    assert.equal(r.attempts, '1');
    assert.equal(seenUpstream(r.id), 1);
    assert.equal(seenUpstream(r.id, 'gpt-4o-mini'), 0);
  });

  for (const [model, what] of [['fb-cut', 'reset mid-stream'], ['fb-stall', 'a stall between chunks']]) {
    it(`${what}: no retry after the first byte; an error event ends the stream, metered`, T, async () => {
      const r = await call(model, { stream: true });
      assert.equal(r.status, 200);
      assert.equal(r.attempts, '1');
      const events = r.text.split('\n\n').filter(Boolean);
      assert.ok(events.length > 2, 'some of the answer was relayed');
      assert.match(events[events.length - 1], /^data: \{"error":/);
      assert.equal(seenUpstream(r.id, 'gpt-4o-mini'), 0);
      const line = await gw.accessLogFor(r.id);
      assert.equal(line.attempts, 1);
      assert.equal(line.usage_source, 'estimated');
      assert.ok(line.completion_tokens > 0);
    });
  }

  /* ------------------------------------------------------- 3. the breaker */

  const health = async () => {
    const r = await fetch(gw.url('/admin/providers/health'), { headers: { authorization: `Bearer ${MASTER}` } });
    assert.equal(r.status, 200);
    return (await r.json()).routes;
  };
  const cbRoute = async () => (await health()).find((x) => x.alias === 'cb' && x.route.startsWith('up/openai/'));

  it('3 failures open the circuit: calls skip the route; health shows it; half-open probe after the cool-down', T, async () => {
    // call 1: two failures on the route, then the fallback
    let r = await call('cb');
    assert.equal(r.attempts, '3');
    // call 2: the third failure opens it; no retry on an open route
    r = await call('cb');
    assert.equal(r.status, 200);
    assert.equal(r.attempts, '2');
    let h = await cbRoute();
    assert.equal(h.circuit, 'open');
    assert.equal(h.failures, 3);
    assert.match(h.last_error.message, /HTTP 500/);
    // open: straight to the fallback, the route not called
    const before = up.requests.length;
    for (let i = 0; i < 5; i++) {
      r = await call('cb');
      assert.equal(r.status, 200);
      assert.equal(r.attempts, '1');
      assert.equal(r.route, 'up/gpt-4o-mini');
    }
    assert.equal(up.requests.slice(before).filter((q) => q.body?.model?.includes('status=500')).length, 0);
    // unauthenticated health is refused
    const anon = await fetch(gw.url('/admin/providers/health'));
    assert.equal(anon.status, 401);
    // after the cool-down: half-open, one probe, which fails: open again
    await sleep(1600);
    h = await cbRoute();
    assert.equal(h.circuit, 'half-open');
    r = await call('cb');
    assert.equal(r.status, 200);
    assert.equal(r.attempts, '2');
    h = await cbRoute();
    assert.equal(h.circuit, 'open');
    // the fallback's own health: closed, requests counted, latency known
    const good = (await health()).find((x) => x.alias === 'cb' && x.route === 'up/gpt-4o-mini');
    assert.equal(good.circuit, 'closed');
    assert.ok(good.requests >= 8);
    assert.ok(good.latency_ms.p50 >= 1);
  });

  it('every route failing: the provider\'s last error after all attempts; circuits all open: tried anyway', T, async () => {
    const r = await call('all-bad');
    assert.equal(r.status, 502, r.text);
    assert.match(r.text, /upstream provider 'down'/);
    assert.equal(r.attempts, null); // an error answer carries no route headers
    let line = await gw.accessLogFor(r.id);
    assert.equal(line.attempts, 4);
    // the second call's failures open both circuits
    await call('all-bad');
    const h = (await health()).filter((x) => x.alias === 'all-bad');
    assert.deepEqual(h.map((x) => x.circuit), ['open', 'open']);
    // every circuit open: a breaker never refuses on its own; the routes
    // are tried (panic) and the client gets the provider's error, in its format
    const r3 = await call('all-bad');
    assert.equal(r3.status, 502, r3.text);
    line = await gw.accessLogFor(r3.id);
    assert.ok(line.attempts >= 2, `attempts ${line.attempts}`);
    const r4 = await fetch(gw.url('/v1/messages'), {
      method: 'POST',
      headers: { 'x-api-key': KEY, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'all-bad', max_tokens: 16, messages: [{ role: 'user', content: 'Hi' }] }),
    });
    const b4 = await r4.json();
    assert.ok(r4.status >= 500, JSON.stringify(b4));
    assert.equal(b4.type, 'error');
    assert.match(b4.error.message, /upstream provider 'down'/);
  });

  it('no sanitizer reports', () => {
    assert.deepEqual(gw.sanitizerReports(), []);
  });
});

/* ------------------------------------------------------ 5. power levels */

describe('power levels: eco, balanced, precision and "auto"', () => {
  let gw;
  const PRECISE_KEY = 'tg-precise-key-0123456789abcdef';
  before(async () => {
    gw = await startGateway(baseConfig('https://127.0.0.1:9', (cfg) => {
      cfg.providers.push({ name: 'm1', type: 'mock' }, { name: 'm2', type: 'mock' }, { name: 'm3', type: 'mock' });
      cfg.models.push(
        { name: 'eco-cheap', level: 'eco', routes: [{ provider: 'm1', model: 'tiny', capabilities: ['json'], price: { input: '0.05', output: '0.10' } }] },
        { name: 'eco-tools', level: 'eco', routes: [{ provider: 'm2', model: 'small', capabilities: ['tools', 'json'], price: { input: '0.50', output: '1.00' } }] },
        { name: 'precise', level: 'precision', price: { input: '9.00', output: '9.00' }, routes: [{ provider: 'm3', model: 'large', price: { input: '5', output: '15' } }] },
      );
      cfg.keys.push({ key: PRECISE_KEY, alias: 'precise-key', level: 'precision' });
    }));
  });
  after(async () => {
    await gw?.stop();
  });

  async function call(model, { key = KEY, tools = false } = {}) {
    const id = newRequestId('level');
    const body = { model, max_tokens: 8, messages: [{ role: 'user', content: 'Hi' }] };
    if (tools) body.tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: {} } } }];
    const r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'x-request-id': id },
      body: JSON.stringify(body),
    });
    const text = await r.text();
    return { status: r.status, text, id, route: r.headers.get('x-tollgate-route') };
  }

  it('"eco" picks the cheapest route of the level that has what the request needs', T, async () => {
    let r = await call('eco');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.route, 'm1/tiny');
    r = await call('eco', { tools: true });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.route, 'm2/small', 'the cheap route has no tools');
    const line = await gw.accessLogFor(r.id);
    assert.equal(line.model, 'eco');
    assert.equal(line.provider_model, 'small');
  });

  it('"auto" is the key\'s level (balanced when it has none); priced as the alias that served', T, async () => {
    let r = await call('auto', { key: PRECISE_KEY });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.route, 'm3/large');
    const line = await gw.accessLogFor(r.id);
    assert.equal(line.model, 'auto');
    // the alias's own price (9 / 9 per 1M), not the route's cost
    assert.equal(Number(line.price_usd) * 1e6 / (line.prompt_tokens + line.completion_tokens), 9);
    // no alias is in "balanced": auto for a key without a level finds no model
    r = await call('auto');
    assert.equal(r.status, 404, r.text);
  });

  it('a virtual key cannot read the health page', T, async () => {
    const r = await fetch(gw.url('/admin/providers/health'), { headers: { authorization: `Bearer ${KEY}` } });
    assert.equal(r.status, 401, 'a virtual key is no admin key');
  });
});

/* ------------------------------------------------ 6. active health checks */

describe('active health checks', () => {
  let up;
  let flap;
  let gw;
  before(async () => {
    up = await startUpstream();
    flap = await startUpstream();
    flap.modelsScript = 'status=503';
    const down = await closedPort();
    gw = await startGateway(baseConfig(up.baseUrl, (cfg) => {
      const base = cfg.providers[0];
      cfg.providers.push(
        { ...base, name: 'chk-down', base_url: `https://127.0.0.1:${down}/v1`, health_check: { interval: '150ms', timeout: '1s' } },
        { ...base, name: 'chk-flap', base_url: flap.baseUrl, health_check: { interval: '150ms', timeout: '1s' } },
        { ...base, name: 'chk-up', health_check: { interval: '150ms' } },
      );
      cfg.routing = { breaker: { failures: 3, cooldown: '600ms' } };
      cfg.admin = { master_key: MASTER };
      cfg.models.push(
        { name: 'hc', routes: [{ provider: 'chk-down', model: 'gpt-4o-mini' }, { provider: 'chk-up', model: 'gpt-4o-mini' }] },
        { name: 'hf', routes: [{ provider: 'chk-flap', model: 'gpt-4o-mini' }, { provider: 'chk-up', model: 'gpt-4o-mini' }] },
      );
    }));
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
    await flap?.close();
  });

  const page = async () => {
    const r = await fetch(gw.url('/admin/providers/health'), { headers: { authorization: `Bearer ${MASTER}` } });
    return r.json();
  };
  const until = async (pred, ms, what) => {
    const end = performance.now() + ms;
    for (;;) {
      const p = await page();
      if (pred(p)) return p;
      if (performance.now() > end) throw new Error(`${what}: ${JSON.stringify(p)}`);
      await sleep(50);
    }
  };

  it('failing checks open a route\'s circuit before any call meets it; calls go to the fallback at once', T, async () => {
    const p = await until((x) => x.routes.find((r) => r.alias === 'hc' && r.route.startsWith('chk-down/'))?.circuit === 'open', 5000, 'hc circuit');
    const chk = Object.fromEntries(p.checks.map((c) => [c.provider, c]));
    assert.equal(chk['chk-down'].state, 'down');
    assert.match(chk['chk-down'].last_error, /connect|refused/i);
    assert.equal(chk['chk-up'].state, 'up');
    assert.ok(chk['chk-up'].ok >= 1);
    const r = await fetch(gw.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'hc', max_tokens: 8, messages: [{ role: 'user', content: 'Hi' }] }),
    });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('x-tollgate-attempts'), '1');
    assert.equal(r.headers.get('x-tollgate-route'), 'chk-up/gpt-4o-mini');
  });

  it('a provider that recovers is closed again by the check after the cool-down, with no traffic', T, async () => {
    await until((x) => x.routes.find((r) => r.alias === 'hf' && r.route.startsWith('chk-flap/'))?.circuit === 'open', 5000, 'hf open');
    flap.modelsScript = null;
    const p = await until((x) => x.routes.find((r) => r.alias === 'hf' && r.route.startsWith('chk-flap/'))?.circuit === 'closed', 5000, 'hf closed');
    assert.equal(p.checks.find((c) => c.provider === 'chk-flap').state, 'up');
    assert.ok(flap.requests.filter((q) => q.path === '/v1/models').length >= 4);
    assert.equal(flap.requests.filter((q) => q.path !== '/v1/models').length, 0, 'no call was sent to find out');
  });

  it('clean exit', async () => {
    const exit = await gw.stop();
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.deepEqual(gw.sanitizerReports(), []);
  });
});
