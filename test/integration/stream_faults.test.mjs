// stream_faults.test.mjs - streams that go wrong: the upstream breaks
// mid-stream (the client gets what was relayed plus one well-formed error
// event and a clean end), the client disconnects (tollgate drops the upstream
// connection at once), and the client stops reading while the upstream floods
// (tollgate's memory stays bounded because it stops reading the upstream).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { startUpstream, floodPlan } from './lib/upstream.mjs';
import { startGateway, baseConfig, RawConn, chatRequest, newRequestId, sleep } from './lib/gateway.mjs';
import { fixtureEvents, expectedStream, fixture, assertCleanShutdown } from './lib/expect.mjs';

/**
 * Splits a client body into the relayed events and the final error event,
 * asserting the error event is one well-formed `data: {"error":{...}}` event.
 */
function splitFinalError(body) {
  const text = body.toString('utf8');
  assert.ok(text.endsWith('\n\n'), `the stream ends with a complete event: ${JSON.stringify(text.slice(-200))}`);
  const prev = text.lastIndexOf('\n\n', text.length - 3);
  const start = prev < 0 ? 0 : prev + 2;
  const tail = text.slice(start);
  const m = /^data: ?([^\n]*)\n\n$/.exec(tail);
  assert.ok(m, `the last event is one data line: ${JSON.stringify(tail)}`);
  let j;
  try {
    j = JSON.parse(m[1]);
  } catch {
    assert.fail(`the last event's data is not JSON: ${m[1]}`);
  }
  assert.ok(j.error && typeof j.error === 'object', `the last event is {"error":{...}}: ${m[1]}`);
  for (const k of ['message', 'type', 'param', 'code']) assert.ok(k in j.error, `error.${k} in ${m[1]}`);
  assert.equal(typeof j.error.message, 'string');
  return { relayed: text.slice(0, start), error: j.error };
}

describe('stream faults', () => {
  let up;
  let gw;
  before(async () => {
    up = await startUpstream();
    gw = await startGateway(baseConfig(up.baseUrl));
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
  });

  for (const [how, opt] of [['a TCP reset', 'reset'], ['a close without TLS close_notify', 'close']]) {
    it(`upstream cut by ${how} mid-stream: partial stream, one error event, clean end`, { timeout: 15000 }, async () => {
      const CUT = 1000;
      const events = fixtureEvents('openai/chat_stream.sse');
      // The events the upstream sent whole before the cut: tollgate relays
      // events as they arrive, so the client must have exactly these.
      const whole = [];
      let end = 0;
      for (const ev of events) {
        end += Buffer.byteLength(ev);
        if (end > CUT) break;
        whole.push(ev);
      }
      assert.ok(whole.length >= 2 && end > CUT, 'the cut falls inside an event, after at least two');

      const id = newRequestId(opt);
      const conn = await RawConn.open(gw.port);
      try {
        await conn.write(chatRequest({ model: `fx/openai/chat_stream?${opt}=${CUT}`, stream: true, headers: { 'x-request-id': id } }));
        const r = await conn.next(10000);
        assert.equal(r.status, 200);
        assert.ok(r.chunked && r.terminated && !r.truncated, 'the response ends with the chunked terminator');
        const { relayed } = splitFinalError(r.body);
        assert.equal(relayed, whole.join(''), 'the client got exactly the whole events sent before the cut');
        const rec = await up.waitForRequestId(id);
        assert.equal(rec.outcome, opt === 'reset' ? 'reset' : 'closed');
        const log = await gw.accessLogFor(id);
        assert.notEqual(log.usage_source, 'provider', 'the upstream never sent usage for this call');
        // The connection is still usable (or cleanly closed): no garbage follows.
        assert.equal(conn.protocolError, null);
      } finally {
        conn.destroy();
      }
    });
  }

  it('an in-band error event from the upstream is relayed as it is', { timeout: 15000 }, async () => {
    const conn = await RawConn.open(gw.port);
    try {
      await conn.write(chatRequest({ model: 'fx/openrouter/chat_stream_midstream_error', stream: true }));
      const r = await conn.next(10000);
      assert.equal(r.status, 200);
      assert.ok(r.terminated);
      assert.ok(r.body.equals(expectedStream('openrouter/chat_stream_midstream_error.sse', false)), r.text());
      assert.ok(r.body.equals(fixture('openrouter/chat_stream_midstream_error.sse')), 'it has no usage-only chunk to strip');
    } finally {
      conn.destroy();
    }
  });

  it('client disconnect mid-stream: tollgate closes the upstream connection within 1 s', { timeout: 15000 }, async () => {
    const id = newRequestId('gone');
    const conn = await RawConn.open(gw.port);
    await conn.write(chatRequest({ model: 'fx/openai/chat_stream?stall=1500', stream: true, headers: { 'x-request-id': id } }));
    const r = await conn.nextHead(10000);
    assert.equal(r.status, 200);
    await conn.waitUntil(() => r.bodyLength > 0, 5000, 'the first relayed bytes');
    const rec = await up.waitFor(() => {
      const q = up.requests.find((x) => x.headers['x-request-id'] === id);
      return q && q.outcome === 'stalled' && q;
    }, 5000, 'the upstream to stall');
    const sock = up.socketOf(rec);
    assert.equal(sock.closedAt, null, 'the upstream connection is open while the client is there');
    const t0 = performance.now();
    conn.destroy();
    await up.waitFor(() => sock.closedAt !== null, 1000, 'tollgate to close the upstream connection after the client left');
    assert.ok(sock.closedAt - t0 < 1000, `closed after ${Math.round(sock.closedAt - t0)} ms`);
  });

  it('exits 0 on SIGTERM, with no sanitizer report', { timeout: 20000 }, async () => {
    await assertCleanShutdown(gw);
  });
});

describe('slow client', () => {
  const FLOOD = Math.round(Number(process.env.TG_IT_FLOOD_MB ?? 200) * 1e6);
  const PAUSE_MS = 4000;
  const RSS_BOUND_KIB = 64 * 1024;
  let up;
  let gw;
  before(async () => {
    up = await startUpstream();
    // A small ASan quarantine so freed-but-quarantined memory does not pass for a leak.
    const asan = [process.env.ASAN_OPTIONS, 'quarantine_size_mb=16'].filter(Boolean).join(':');
    gw = await startGateway(baseConfig(up.baseUrl, (c) => {
      c.timeouts.idle = '60s';
      c.providers[0].timeouts.idle = '60s';
      c.providers[0].timeouts.total = '120s';
    }), { env: { ASAN_OPTIONS: asan } });
  });
  after(async () => {
    await gw?.stop();
    await up?.close();
  });

  it(`a client that stops reading while the upstream streams ${FLOOD / 1e6} MB: bounded memory, backpressure, every byte delivered`, { timeout: 180000 }, async (t) => {
    // Warm up the same path (TLS session, buffers) before taking the baseline.
    const warm = await RawConn.open(gw.port, { keepBody: false });
    await warm.write(chatRequest({ model: 'fx/synthetic/flood?bytes=2000000', stream: true }));
    const w = await warm.next(30000);
    assert.equal(w.status, 200);
    warm.destroy();
    const rss0 = gw.rssKiB();
    let rssMax = rss0;
    const sampler = setInterval(() => {
      try {
        rssMax = Math.max(rssMax, gw.rssKiB());
      } catch {
        /* exited: the assertions below say so */
      }
    }, 50);

    const id = newRequestId('flood');
    const conn = await RawConn.open(gw.port, { keepBody: false, hashBody: true });
    try {
      await conn.write(chatRequest({ model: `fx/synthetic/flood?bytes=${FLOOD}`, stream: true, headers: { 'x-request-id': id } }));
      const r = await conn.nextHead(10000);
      conn.pause();
      assert.equal(r.status, 200);
      const rec = await up.waitForRequestId(id);
      await sleep(PAUSE_MS);

      const sentWhilePaused = rec.bytesSent;
      const rssPaused = rssMax - rss0;
      assert.ok(rec.stallingSince !== null && performance.now() - rec.stallingSince > 1000,
        `the upstream is blocked in a write, for over 1 s (sent ${sentWhilePaused} bytes, stalls ${rec.writeStalls})`);
      assert.ok(sentWhilePaused < FLOOD / 2, `only ${sentWhilePaused} of ${FLOOD} bytes left the upstream while the client did not read`);
      assert.ok(rssPaused < RSS_BOUND_KIB, `RSS grew ${rssPaused} KiB while the client did not read (bound ${RSS_BOUND_KIB})`);

      t.diagnostic(`paused ${PAUSE_MS} ms: upstream sent ${sentWhilePaused} bytes, RSS +${rssPaused} KiB over ${rss0} KiB`);
      const t1 = performance.now();
      conn.resume();
      await conn.waitBody(r, 150000);
      clearInterval(sampler);
      t.diagnostic(`read ${r.bodyLength} bytes in ${Math.round(performance.now() - t1)} ms; peak RSS +${rssMax - rss0} KiB`);
      const plan = floodPlan(FLOOD);
      assert.ok(r.terminated && !r.truncated, 'the stream ends cleanly');
      assert.equal(r.bodyLength, plan.totalBytes - plan.usage.length, 'byte count: the whole flood minus the usage chunk');
      assert.equal(r.bodyLength, rec.flood.withoutUsageBytes);
      assert.equal(r.sha256, rec.flood.withoutUsageSha256, 'the bytes are the ones the upstream sent, in order');
      assert.ok(rssMax - rss0 < RSS_BOUND_KIB, `RSS grew ${rssMax - rss0} KiB over the whole flood (bound ${RSS_BOUND_KIB})`);
      const log = await gw.accessLogFor(id);
      assert.equal(log.completion_tokens, plan.count);
      assert.equal(log.usage_source, 'provider');
    } finally {
      clearInterval(sampler);
      conn.destroy();
    }
  });

  it('exits 0 on SIGTERM, with no sanitizer report', { timeout: 20000 }, async () => {
    await assertCleanShutdown(gw);
  });
});
