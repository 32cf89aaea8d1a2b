// proxy.test.mjs - egress through an HTTP proxy with CONNECT: a provider's
// calls tunnel through the proxy (with Proxy-Authorization from the URL's
// user and password), https_proxy from the environment applies to every
// provider, no_proxy and `proxy: direct` bypass it, and a proxy that
// refuses the tunnel is a connect failure the routes fall back from.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { startUpstream } from './lib/upstream.mjs';
import { startGateway, baseConfig, newRequestId, KEY } from './lib/gateway.mjs';

/** A CONNECT proxy on 127.0.0.1 that records what it is asked. */
async function startProxy({ auth } = {}) {
  const seen = [];
  const srv = http.createServer((req, res) => {
    res.writeHead(405);
    res.end();
  });
  srv.on('connect', (req, sock, head) => {
    seen.push({ target: req.url, auth: req.headers['proxy-authorization'] ?? null });
    if (auth && req.headers['proxy-authorization'] !== `Basic ${Buffer.from(auth).toString('base64')}`) {
      sock.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n');
      return;
    }
    const [host, port] = req.url.split(':');
    const up = net.connect(Number(port), host === 'localhost' ? '127.0.0.1' : host, () => {
      sock.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) up.write(head);
      up.pipe(sock);
      sock.pipe(up);
    });
    up.on('error', () => sock.destroy());
    sock.on('error', () => up.destroy());
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { seen, port: srv.address().port, close: () => new Promise((r) => { srv.closeAllConnections?.(); srv.close(r); }) };
}

describe('egress proxy (CONNECT)', () => {
  let up;
  let proxy;
  let strict;
  let gw;
  let envGw;
  before(async () => {
    up = await startUpstream();
    proxy = await startProxy();
    strict = await startProxy({ auth: 'user@corp:s3cret' });
    gw = await startGateway(baseConfig(up.baseUrl, (cfg) => {
      const base = cfg.providers[0];
      cfg.providers.push(
        { ...base, name: 'viaproxy', proxy: `http://127.0.0.1:${proxy.port}` },
        { ...base, name: 'authed', proxy: `http://user%40corp:s3cret@127.0.0.1:${strict.port}` },
        { ...base, name: 'refused', proxy: `http://127.0.0.1:${strict.port}` },
      );
      cfg.models.push(
        { name: 'p-plain', provider: 'viaproxy', model: 'gpt-4o-mini' },
        { name: 'p-auth', provider: 'authed', model: 'gpt-4o-mini' },
        { name: 'p-fallback', routes: [{ provider: 'refused', model: 'gpt-4o-mini' }, { provider: 'up', model: 'gpt-4o-mini' }] },
      );
      cfg.routing = { retries: { attempts: 1 } };
    }));
    // https_proxy from the environment; no_proxy keeps one provider direct
    envGw = await startGateway(baseConfig(up.baseUrl, (cfg) => {
      cfg.providers.push({ ...cfg.providers[0], name: 'direct', proxy: 'direct' });
      cfg.models.push({ name: 'd', provider: 'direct', model: 'gpt-4o-mini' });
    }), { env: { https_proxy: `http://127.0.0.1:${proxy.port}`, no_proxy: 'example.invalid' } });
  });
  after(async () => {
    await gw?.stop();
    await envGw?.stop();
    await up?.close();
    await proxy?.close();
    await strict?.close();
  });

  async function call(g, model) {
    const r = await fetch(g.url('/v1/chat/completions'), {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json', 'x-request-id': newRequestId('proxy') },
      body: JSON.stringify({ model, max_tokens: 8, messages: [{ role: 'user', content: 'Hi' }] }),
    });
    return { status: r.status, text: await r.text(), route: r.headers.get('x-tollgate-route'), attempts: r.headers.get('x-tollgate-attempts') };
  }

  it('a provider\'s calls tunnel through its proxy; the tunnel is reused', { timeout: 20000 }, async () => {
    const n0 = proxy.seen.length;
    for (let i = 0; i < 3; i++) assert.equal((await call(gw, 'p-plain')).status, 200);
    const seen = proxy.seen.slice(n0);
    assert.equal(seen.length, 1, 'one CONNECT for three calls (pooled)');
    assert.equal(seen[0].target, `localhost:${up.port}`);
    assert.equal(seen[0].auth, null);
  });

  it('the URL\'s user and password become Proxy-Authorization', { timeout: 20000 }, async () => {
    const r = await call(gw, 'p-auth');
    assert.equal(r.status, 200, r.text);
    assert.equal(strict.seen.at(-1).auth, `Basic ${Buffer.from('user@corp:s3cret').toString('base64')}`);
  });

  it('a proxy refusing the tunnel (407) is a connect failure: the next route serves', { timeout: 20000 }, async () => {
    const r = await call(gw, 'p-fallback');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.attempts, '2');
    assert.equal(r.route, 'up/gpt-4o-mini');
  });

  it('https_proxy from the environment applies to every provider but one marked direct', { timeout: 20000 }, async () => {
    const n0 = proxy.seen.length;
    assert.equal((await call(envGw, 'fx-chat')).status, 200);
    assert.equal(proxy.seen.length, n0 + 1);
    assert.equal((await call(envGw, 'd')).status, 200);
    assert.equal(proxy.seen.length, n0 + 1, 'proxy: direct bypasses it');
  });

  it('clean exits', async () => {
    for (const g of [gw, envGw]) assert.deepEqual(g.sanitizerReports(), []);
  });
});
