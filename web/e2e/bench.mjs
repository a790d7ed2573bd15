// Measures the dashboard in Debian's Chromium against the real binary with
// the demo fleet: frame time and dropped frames while a machine view streams
// 4 metrics, the sensor → screen latency from the badge's data, the fleet
// view streaming every machine, scrolling a 10 000-machine fleet, and the
// size of the page (gzipped, as the server sends it).
//
//   make web-bench    (or TWINLINE_BIN=bin/twinline node e2e/bench.mjs)
//   BENCH_SECONDS=30 BENCH_MACHINES=1000 BENCH_RATE=2000 BENCH_FLEET_MACHINES=10000
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { api, chromiumMissing, frameStats, launchBrowser, removeDir, repoRoot, startServer, waitFor } from './lib.mjs';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 30);
const MACHINES = Number(process.env.BENCH_MACHINES ?? 1000);
const RATE = Number(process.env.BENCH_RATE ?? 2000);
const FLEET_MACHINES = Number(process.env.BENCH_FLEET_MACHINES ?? 10000);
const FLEET_RATE = Number(process.env.BENCH_FLEET_RATE ?? 5000);
// which parts to run: baseline (an empty page), machine (machine view and fleet view at
// BENCH_MACHINES), scroll (scrolling a BENCH_FLEET_MACHINES fleet)
const PARTS = (process.env.BENCH_PARTS ?? 'baseline,machine,scroll').split(',');

const skip = chromiumMissing();
if (skip) {
  console.error(skip);
  process.exit(1);
}

const pct = (xs, p) => {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
};
const r1 = (x) => Math.round(x * 10) / 10;

/** Records every animation frame for `seconds` in the page; returns frame and drawer stats. */
async function measureFrames(page, seconds, during) {
  await page.evaluate(() => {
    const w = window;
    w.__twinline.resetStats();
    w.__bench = { frames: [], stop: false };
    const tick = (t) => {
      w.__bench.frames.push(t);
      if (!w.__bench.stop) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  const until = Date.now() + seconds * 1000;
  if (during) await during(until);
  // a measurement window, not a synchronisation: the page runs freely meanwhile
  while (Date.now() < until) await new Promise((r) => setTimeout(r, 250));
  const res = await page.evaluate(() => {
    const w = window;
    w.__bench.stop = true;
    const f = w.__bench.frames;
    const l = w.__twinline.latency();
    return { ts: f, draw: w.__twinline.drawTimes(), lat: l.all, serverP50: l.serverP50 };
  });
  // dropped frames as the fleet e2e counts them (frameStats, lib.mjs)
  const f = frameStats(res.ts);
  return {
    frames: f.frames,
    frameIntervalP50: f.frameP50,
    frameP95: f.frameP95,
    frameP99: f.frameP99,
    frameMax: f.frameMax,
    dropped: f.dropped,
    droppedPct: f.droppedPct,
    // frames in which a view actually drew (a chart or the fleet grid)
    drawFrames: res.draw.filter((d) => d > 0.5).length,
    drawP50: r1(pct(res.draw.filter((d) => d > 0.5), 50)),
    drawP99: r1(pct(res.draw.filter((d) => d > 0.5), 99)),
    drawMax: r1(Math.max(...res.draw)),
    latencyN: res.lat.length,
    latencyP50: Math.round(pct(res.lat, 50)),
    latencyP99: Math.round(pct(res.lat, 99)),
    // the server's share (arrival − ingest time) over the last 2048 messages
    serverShareP50: Math.round(res.serverP50),
  };
}

const results = {};
const browser = await launchBrowser();
try {
  // page size: the single embedded page, gzipped as the server sends it
  const page = readFileSync(join(repoRoot, 'internal/web/dist/app/index.html'));
  results.bundle = { rawBytes: page.length, gzipBytes: gzipSync(page, { level: 9 }).length };
  // the chunks fetched later (Plotly by the machine view, the tracing SDK when tracing is on)
  const assets = join(repoRoot, 'internal/web/dist/app/assets');
  for (const name of readdirSync(assets).filter((n) => n.endsWith('.js'))) {
    const body = readFileSync(join(assets, name));
    results.bundle[name.replace(/-[^-]+\.js$/, '')] = { rawBytes: body.length, gzipBytes: gzipSync(body, { level: 9 }).length };
  }

  // baseline: an empty page under the same machine load (how many frames the machine drops anyway)
  if (PARTS.includes('baseline')) {
    const p = await browser.newPage({ viewport: { width: 1440, height: 900 } });
    await p.setContent('<p>baseline</p>');
    await p.evaluate(() => {
      window.__twinline = { resetStats() {}, drawTimes: () => [], latency: () => ({ all: [] }) };
    });
    results.baseline = await measureFrames(p, SECONDS);
    await p.close();
  }

  // machine view with 4 metrics, and the fleet view, at MACHINES machines
  let srv;
  if (PARTS.includes('machine')) srv = await startServer({ machines: MACHINES, rate: RATE });
  if (srv) try {
    const { machines } = await waitFor(async () => {
      const r = await api(srv.url, '/api/v1/machines');
      return r.count === MACHINES ? r : undefined;
    }, { timeoutMs: 60_000 });
    const id = machines.map((m) => m.id).sort()[0];
    const p = await browser.newPage({ viewport: { width: 1440, height: 900 } });
    const served = await p.goto(`${srv.url}/#/m/${encodeURIComponent(id)}`);
    results.bundle.servedEncoding = (await served.allHeaders())['content-encoding'] ?? 'identity';
    await p.waitForSelector('[data-testid=conn][data-state=live]');
    await p.waitForFunction(() => Number(document.querySelector('[data-testid=chart]')?.dataset.draws) > 20, undefined, { timeout: 60_000 });
    const metrics = await p.$$eval('.metric-picks input:checked', (xs) => xs.length);
    results.machineView = { machines: MACHINES, rate: RATE, metrics, seconds: SECONDS, ...(await measureFrames(p, SECONDS)) };
    await p.goto(`${srv.url}/#/`);
    await p.waitForFunction((n) => document.querySelector('[data-testid=count-all] strong')?.textContent === String(n), MACHINES, {
      timeout: 60_000,
    });
    results.fleetView = { machines: MACHINES, rate: RATE, seconds: SECONDS, ...(await measureFrames(p, SECONDS)) };
    await p.close();
  } finally {
    await srv.stop();
    removeDir(srv.dataDir);
  }

  // scrolling a large fleet: FLEET_MACHINES tiles, virtualised
  if (FLEET_MACHINES > 0 && PARTS.includes('scroll')) {
    srv = await startServer({ machines: FLEET_MACHINES, rate: FLEET_RATE });
    try {
      await waitFor(async () => (await api(srv.url, '/api/v1/machines')).count === FLEET_MACHINES, { timeoutMs: 120_000 });
      const p = await browser.newPage({ viewport: { width: 1440, height: 900 } });
      await p.goto(`${srv.url}/#/`);
      await p.waitForFunction((n) => document.querySelector('[data-testid=count-all] strong')?.textContent === String(n), FLEET_MACHINES, {
        timeout: 120_000,
      });
      const tilesInDom = await p.$$eval('.tile', (x) => x.length);
      const scroll = await measureFrames(p, SECONDS, async () => {
        // scroll the grid continuously, top to bottom and back, 40 px a frame
        await p.evaluate(() => {
          const el = document.querySelector('[data-testid=fleet-grid]');
          let dir = 1;
          const step = () => {
            if (window.__bench.stop) return;
            el.scrollTop += 40 * dir;
            if (el.scrollTop + el.clientHeight >= el.scrollHeight - 1) dir = -1;
            if (el.scrollTop <= 0) dir = 1;
            requestAnimationFrame(step);
          };
          requestAnimationFrame(step);
        });
      });
      results.fleetScroll = { machines: FLEET_MACHINES, rate: FLEET_RATE, seconds: SECONDS, tilesInDom, ...scroll };
      await p.close();
    } finally {
      await srv.stop();
      removeDir(srv.dataDir);
    }
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(results, null, 2));
