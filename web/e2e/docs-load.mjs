// How long /docs takes to show every operation (docs/benchmarks.md,
// issue 17): RUNS loads (default 5) of the page in a
// fresh browser context each (nothing cached), against `twinline serve
// --demo`. Run: cd web && TWINLINE_BIN=$PWD/../bin/twinline node e2e/docs-load.mjs
import { launchBrowser, removeDir, startServer } from './lib.mjs';

const runs = Number(process.env.RUNS || 5);
const srv = await startServer({ machines: 3, rate: 20 });
const browser = await launchBrowser();
const times = [];
try {
  const doc = await (await fetch(`${srv.url}/api/openapi.json`)).json();
  const ops = Object.values(doc.paths).flatMap((p) => Object.keys(p).filter((m) => ['get', 'put', 'post', 'delete', 'patch'].includes(m))).length;
  for (let i = 0; i < runs; i++) {
    const context = await browser.newContext();
    const page = await context.newPage();
    const t0 = Date.now();
    await page.goto(`${srv.url}/docs`);
    await page.waitForFunction((n) => document.querySelectorAll('.opblock').length === n, ops, { timeout: 60_000 });
    times.push(Date.now() - t0);
    await context.close();
  }
  times.sort((a, b) => a - b);
  console.log(`operations rendered: ${ops}; load to all rendered, ms: ${times.join(' ')} (median ${times[Math.floor(times.length / 2)]})`);
} finally {
  await browser.close();
  await srv.stop();
  removeDir(srv.dataDir);
}
