// Takes the screenshots of the twin control (issue 15) against the real
// binary: docs/img/twin.png (machine page, dark: state timeline, twin panel,
// commands), docs/img/oee.png (OEE view, light), docs/img/fleet-states.png
// (tiles coloured by state).
// Run: TWINLINE_BIN=bin/twinline npm run screenshots:control
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { device, seedControlled } from './control-lib.mjs';
import { chromiumMissing, launchBrowser, removeDir, repoRoot, startServer } from './lib.mjs';

const skip = chromiumMissing();
if (skip) {
  console.error(skip);
  process.exit(1);
}
const out = join(repoRoot, 'docs/img');
mkdirSync(out, { recursive: true });

const srv = await startServer({ machines: 24, rate: 100, extra: ['--out-of-order-window', '1h'] });
const browser = await launchBrowser();
try {
  const ids = ['press-01', 'press-02', 'press-03', 'oven-01', 'oven-02'];
  for (const [i, id] of ids.entries()) await seedControlled(srv.url, id, { line: i < 3 ? 'presses' : 'ovens' });
  const d = device(srv.url, 'press-01');
  await d.send([{ ageMs: 0, state: 'RUNNING' }]);
  await device(srv.url, 'oven-02').send([{ ageMs: 0, state: 'DOWN' }]);
  await device(srv.url, 'press-03').send([{ ageMs: 0, state: 'STOPPED' }]);

  const ctx = await browser.newContext({ viewport: { width: 1440, height: 1100 }, deviceScaleFactor: 1 });
  const page = await ctx.newPage();
  await page.addInitScript(() => localStorage.setItem('twinline.theme', 'dark'));
  await page.goto(`${srv.url}/#/m/press-01?range=1h`);
  await page.locator('[data-testid=twin-panel] tr[data-field=tempSetpoint]').waitFor();
  await page.locator('[data-testid=commands-panel] [data-command=reset]').click();
  await page.getByRole('button', { name: 'Send reset…' }).click();
  await page.locator('[data-testid=confirm]').getByRole('button', { name: 'Send' }).click();
  const item = page.locator('[data-testid=command-history] li[data-command-id]').first();
  await item.waitFor();
  const id = await item.getAttribute('data-command-id');
  await d.respond(id, { state: 'accepted' });
  await d.respond(id, { state: 'succeeded', result: { counter: 'parts' } });
  await page.locator(`li[data-command-id="${id}"][data-state=succeeded]`).waitFor();
  await page.locator('[data-testid=chart] .main-svg').waitFor();
  await page.evaluate(() => document.activeElement?.blur());
  await page.screenshot({ path: join(out, 'twin.png'), fullPage: false });

  const light = await ctx.newPage();
  await light.addInitScript(() => localStorage.setItem('twinline.theme', 'light'));
  await light.goto(`${srv.url}/#/oee`);
  await light.locator('[data-testid=oee] section[data-line]').first().waitFor();
  await light.screenshot({ path: join(out, 'oee.png') });

  await light.goto(`${srv.url}/#/?group=line`);
  await light.locator('.tile[data-machine=oven-02][data-state=DOWN]').waitFor();
  await light.screenshot({ path: join(out, 'fleet-states.png') });
  console.log(`wrote ${out}/twin.png, oee.png, fleet-states.png`);
} finally {
  await browser.close();
  await srv.stop();
  removeDir(srv.dataDir);
}
