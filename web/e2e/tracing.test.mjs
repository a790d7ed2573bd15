// End-to-end tests of browser tracing (issue 16, docs/observability.md
// "Browser spans and the relay") in Debian's Chromium against the real
// twinline binary, exporting to tools/otlpsink, a collector that prints
// every span it receives as a JSON line. The server requires sign-in (a
// token exists before it starts), so the relay is used with the
// dashboard's own credentials. Synchronisation waits on conditions, never
// on fixed sleeps.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { api, bearer, chromiumMissing, createToken, launchBrowser, removeDir, repoRoot, startServer, tempDir, waitFor } from './lib.mjs';

const skip = chromiumMissing();
if (skip) console.log(`# SKIP browser tests: ${skip}`);

const UI_URL = 'http://traces.example/trace/{traceId}';

const hex = (bytes) => randomBytes(bytes).toString('hex');

/**
 * Starts the collector: OTLPSINK_BIN (make web-e2e builds it), else `go run
 * ./tools/otlpsink`. Returns { url, spans, waitSpan(pred, what), stop() }.
 */
async function startSink() {
  const [cmd, args] = process.env.OTLPSINK_BIN ? [process.env.OTLPSINK_BIN, []] : ['go', ['run', './tools/otlpsink']];
  // stdin stays open: the sink stops when it closes (this process gone)
  const proc = spawn(cmd, args, { cwd: repoRoot, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const spans = [];
  let listen;
  createInterface({ input: proc.stdout }).on('line', (line) => {
    const v = JSON.parse(line);
    if (v.listen) listen = v.listen;
    else spans.push(v);
  });
  let exited = false;
  proc.on('exit', () => (exited = true));
  await waitFor(
    () => {
      if (exited) throw new Error(`otlpsink exited: ${stderr}`);
      return listen;
    },
    { timeoutMs: 120_000, what: 'otlpsink to listen (go run compiles it the first time)' },
  );
  return {
    url: listen,
    spans,
    waitSpan: (pred, what) =>
      waitFor(() => spans.find(pred), { timeoutMs: 20_000, what }).catch((err) => {
        throw new Error(`${err.message}; the last spans received: ${JSON.stringify(spans.slice(-10))}`);
      }),
    stop: () => proc.stdin.end(),
  };
}

/** Signs in on the sign-in page with token (the page must show it). */
async function signIn(page, token) {
  await page.locator('[data-testid=sign-in]').waitFor();
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.locator('[data-testid=identity]').waitFor();
}

/** A page signed in with token, recording its page errors and the URLs it fetched. */
async function signedInPage(browser, url, token) {
  const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await ctx.newPage();
  const errors = [];
  const requests = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('request', (r) => requests.push(new URL(r.url()).pathname));
  await page.goto(`${url}/`);
  await signIn(page, token);
  return { ctx, page, errors, requests };
}

/** One OTLP/JSON span as a client would post it, claiming to be the server. */
function otlpSpan(traceId, spanId, name = 'posted') {
  return {
    resourceSpans: [
      {
        resource: { attributes: [{ key: 'service.name', value: { stringValue: 'twinline' } }] },
        scopeSpans: [{ spans: [{ traceId, spanId, name, kind: 1, startTimeUnixNano: '1765000000000000000', endTimeUnixNano: '1765000000001000000' }] }],
      },
    ],
  };
}

describe('browser tracing through the relay', { skip }, () => {
  let sink;
  let srv;
  let browser;
  let demo;
  const tok = {};

  before(async () => {
    sink = await startSink();
    const dataDir = tempDir();
    tok.reader = await createToken(dataDir, 'e2e-reader', 'read');
    tok.ingest = await createToken(dataDir, 'e2e-ingest', 'ingest');
    srv = await startServer({
      dataDir,
      machines: 3,
      rate: 30,
      // sample nothing of our own: only a request whose traceparent says
      // sampled is traced (parent-based), so the trace under test is alone
      extra: ['--otlp-endpoint', sink.url, '--trace-ui-url', UI_URL, '--trace-sample', '0'],
    });
    browser = await launchBrowser();
    demo = await waitFor(
      async () => {
        const r = await api(srv.url, '/api/v1/machines', { headers: bearer(tok.reader) });
        return r.count >= 3 ? r.machines.map((m) => m.id).sort() : undefined;
      },
      { what: 'the demo fleet' },
    );
  });

  after(async () => {
    await browser?.close();
    await srv?.stop();
    if (srv) removeDir(srv.dataDir);
    sink?.stop();
  });

  it('refuses unauthenticated and oversize posts, and relays a valid one as the dashboard', async () => {
    const post = (body, headers = {}) =>
      fetch(`${srv.url}/api/v1/traces`, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body });
    const traceId = hex(16);
    const valid = JSON.stringify(otlpSpan(traceId, hex(8)));

    let r = await post(valid);
    assert.equal(r.status, 401, 'without credentials');
    assert.match(r.headers.get('content-type'), /problem\+json/);

    r = await post(valid, { Authorization: 'Bearer tl_made_up' });
    assert.equal(r.status, 401, 'with an unknown token');

    const big = otlpSpan(hex(16), hex(8));
    big.resourceSpans[0].scopeSpans[0].spans[0].attributes = [{ key: 'padding', value: { stringValue: 'x'.repeat(70 << 10) } }];
    r = await post(JSON.stringify(big), bearer(tok.reader));
    assert.equal(r.status, 413, 'over 64 KiB');
    assert.match((await r.json()).detail, /exceeds 65536 bytes/);

    r = await post(valid, bearer(tok.ingest));
    assert.equal(r.status, 403, 'an ingest-only token');

    r = await post(valid, bearer(tok.reader));
    assert.equal(r.status, 200, await r.text());
    const got = await sink.waitSpan((s) => s.traceId === traceId, 'the posted span at the collector');
    assert.equal(got.name, 'posted');
    assert.equal(got.service, 'twinline-dashboard', 'a client cannot pose as the server');
    // nothing of the refused posts went through
    assert.equal(sink.spans.filter((s) => s.name === 'posted').length, 1);
  });

  it("exports the page's render span, child of the message's traceparent, through the relay", async () => {
    const { ctx, page, errors, requests } = await signedInPage(browser, srv.url, tok.reader);
    const machine = demo[0];
    const traceId = hex(16);
    const parent = hex(8);
    // Stand in for the server's side: the first samples message of the
    // machine gets a sampled traceparent on its way to the page.
    let injected = 0;
    await page.routeWebSocket(/\/api\/v1\/stream/, (ws) => {
      const server = ws.connectToServer();
      server.onMessage((raw) => {
        if (typeof raw === 'string' && injected === 0) {
          const m = JSON.parse(raw);
          if (m.type === 'samples' && m.machine === machine) {
            m.traceparent = `00-${traceId}-${parent}-01`;
            injected = m.seq;
            ws.send(JSON.stringify(m));
            return;
          }
        }
        ws.send(raw);
      });
    });
    await page.goto(`${srv.url}/#/m/${encodeURIComponent(machine)}`);
    await page.waitForSelector('[data-testid=chart] .main-svg');

    const span = await sink.waitSpan((s) => s.traceId === traceId && s.name === 'render', 'the render span at the collector');
    assert.equal(span.parentSpanId, parent, 'the render continues the message trace');
    assert.equal(span.service, 'twinline-dashboard');
    assert.equal(span.kind, 5, 'SPAN_KIND_CONSUMER');
    assert.equal(span.attributes['twinline.machine'], machine);
    assert.equal(span.attributes['twinline.stream.seq'], String(injected));
    assert.equal(span.attributes['twinline.drawn'], 'true');
    assert.ok(Number(span.attributes['twinline.samples']) >= 1, `samples ${span.attributes['twinline.samples']}`);

    // the latency badge links to the trace
    await page.waitForFunction((href) => document.querySelector('[data-testid=latency]')?.getAttribute('href') === href, UI_URL.replace('{traceId}', traceId));
    // the SDK came as its own chunk, once tracing was on
    assert.equal(requests.filter((p) => p.startsWith('/assets/otel-')).length, 1, `requests: ${requests.filter((p) => p.startsWith('/assets/'))}`);
    assert.deepEqual(errors, []);
    await ctx.close();
  });

  it("follows the server's trace of an ingested event into the browser", async () => {
    const machine = 'traced-1';
    const ingest = (event, headers = {}) =>
      api(srv.url, '/api/v1/events', {
        method: 'POST',
        headers: bearer(tok.ingest, { 'Content-Type': 'application/json', ...headers }),
        body: JSON.stringify(event),
      });
    await ingest({ machineId: machine, temp: 20 }); // registers the machine
    const { ctx, page, errors } = await signedInPage(browser, srv.url, tok.reader);
    await page.goto(`${srv.url}/#/m/${encodeURIComponent(machine)}`);
    await page.waitForFunction(() => Number(document.querySelector('[data-testid=chart]')?.dataset.draws) > 0);

    const traceId = hex(16);
    const traceparent = `00-${traceId}-${hex(8)}-01`;
    const isRender = (s) => s.traceId === traceId && s.name === 'render' && s.service === 'twinline-dashboard';
    // The page may still be switching its stream to the machine: an event
    // published before that never reaches it. Each try sends one more
    // event in the same trace, until one's render span arrives.
    const render = await waitFor(
      async () => {
        await ingest({ machineId: machine, temp: 21 }, { traceparent });
        return waitFor(() => sink.spans.find(isRender), { timeoutMs: 3_000, what: 'a render span' });
      },
      { timeoutMs: 20_000, intervalMs: 0, what: "the render span in the ingest request's trace" },
    ).catch((err) => {
      throw new Error(`${err.message}; the last spans received: ${JSON.stringify(sink.spans.slice(-10))}`);
    });
    assert.equal(render.attributes['twinline.machine'], machine);
    // its parent is the server's publish span, exported to the same collector
    const publish = await sink.waitSpan((s) => s.spanId === render.parentSpanId, "the render span's parent");
    assert.equal(publish.traceId, traceId);
    assert.notEqual(publish.service, 'twinline-dashboard');
    await page.waitForFunction((href) => document.querySelector('[data-testid=latency]')?.getAttribute('href') === href, UI_URL.replace('{traceId}', traceId));
    assert.deepEqual(errors, []);
    if (process.env.TRACE_PICTURE) {
      // docs/img/trace.png (make trace-picture): this trace, sensor to screen
      const chain = await waitFor(() => traceOf(sink.spans, render), { timeoutMs: 20_000, what: 'the whole trace of the render span' });
      await page.setViewportSize({ width: 1400, height: 120 + 34 * chain.length });
      await page.setContent(waterfall(chain));
      await page.screenshot({ path: process.env.TRACE_PICTURE });
    }
    await ctx.close();
  });
});

/**
 * The spans of one sensor → screen path: the render span's ancestors and
 * their children (decode, store commit, sinks), once every server span
 * of it arrived; undefined until then.
 */
function traceOf(spans, render) {
  const byId = new Map(spans.filter((s) => s.traceId === render.traceId).map((s) => [s.spanId, s]));
  const chain = new Set();
  for (let s = render; s; s = byId.get(s.parentSpanId)) chain.add(s.spanId);
  const picked = [...byId.values()].filter((s) => chain.has(s.spanId) || chain.has(s.parentSpanId));
  const names = new Set(picked.map((s) => s.name));
  const want = ['ingest', 'decode', 'process', 'store commit', 'sinks', 'hub publish', 'render'];
  return want.every((n) => names.has(n)) ? picked.sort((a, b) => a.startMs - b.startMs) : undefined;
}

/** A trace viewer's waterfall of spans (sorted by start), as an HTML page. */
function waterfall(spans) {
  const t0 = Math.min(...spans.map((s) => s.startMs));
  const t1 = Math.max(...spans.map((s) => s.endMs));
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  const depth = (s) => (byId.has(s.parentSpanId) ? 1 + depth(byId.get(s.parentSpanId)) : 0);
  const esc = (t) => String(t).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
  const rows = spans
    .map((s) => {
      const left = ((s.startMs - t0) / (t1 - t0)) * 100;
      const width = Math.max(((s.endMs - s.startMs) / (t1 - t0)) * 100, 0.3);
      const color = s.service === 'twinline-dashboard' ? '#e8833a' : '#3a7be8';
      return `<tr><td style="padding-left:${8 + 16 * depth(s)}px">${esc(s.name)} <span class=svc>${esc(s.service)}</span></td>
        <td class=lane><div class=bar style="left:${left}%;width:${width}%;background:${color}"></div>
        <span class=ms style="left:${Math.min(left + width, 88)}%">${(s.endMs - s.startMs).toFixed(2)} ms</span></td></tr>`;
    })
    .join('');
  return `<!doctype html><meta charset=utf-8><style>
    body{font:14px system-ui,sans-serif;margin:16px;color:#222} h1{font-size:16px;margin:0 0 4px} p{margin:0 0 12px;color:#555}
    table{border-collapse:collapse;width:100%} td{height:30px;border-bottom:1px solid #eee;white-space:nowrap}
    td:first-child{width:330px} .svc{color:#888;font-size:12px} .lane{position:relative}
    .bar{position:absolute;top:8px;height:14px;border-radius:2px} .ms{position:absolute;top:7px;margin-left:6px;font-size:12px;color:#444}
  </style><h1>trace ${esc(spans[0].traceId)}: ${(t1 - t0).toFixed(1)} ms, sensor to screen</h1>
  <p>HTTP ingest → in-process log → store commit → hub publish → the dashboard's render span (orange, exported through POST /api/v1/traces). Spans as the collector received them (tools/otlpsink), drawn by web/e2e/tracing.test.mjs.</p>
  <table>${rows}</table>`;
}

describe('a dashboard without tracing', { skip }, () => {
  let srv;
  let browser;

  before(async () => {
    srv = await startServer({ machines: 2, rate: 20 });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await srv?.stop();
    if (srv) removeDir(srv.dataDir);
  });

  it('never loads the tracing SDK, and the relay is not there', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const requests = [];
    page.on('request', (r) => requests.push(new URL(r.url()).pathname));
    const machines = await waitFor(async () => {
      const r = await api(srv.url, '/api/v1/machines');
      return r.count === 2 ? r.machines : undefined;
    }, { what: 'the demo fleet' });
    await page.goto(`${srv.url}/#/m/${encodeURIComponent(machines[0].id)}`);
    await page.waitForFunction(() => Number(document.querySelector('[data-testid=chart]')?.dataset.draws) > 2);
    const t = await page.evaluate(() => window.__twinline.traces());
    assert.equal(t.enabled, false);
    // the machine view fetches the chart's chunk (Plotly, ADR 0034), not the SDK's
    assert.deepEqual(
      requests.filter((p) => p.startsWith('/assets/') && !/^\/assets\/plotly-[\w-]+\.js$/.test(p)),
      [],
    );
    const r = await fetch(`${srv.url}/api/v1/traces`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    assert.equal(r.status, 404);
    await page.close();
  });
});
