// Takes the README's screenshots of the dashboard against the real binary:
//   docs/img/fleet.png (light theme), docs/img/machine.png (dark theme),
//   docs/img/alarms.png.
// Run: make web-screenshots (or TWINLINE_BIN=bin/twinline node e2e/screenshots.mjs)
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { api, chromiumMissing, launchBrowser, removeDir, repoRoot, startServer, waitFor } from './lib.mjs';

const skip = chromiumMissing();
if (skip) {
  console.error(skip);
  process.exit(1);
}
const out = join(repoRoot, 'docs/img');
mkdirSync(out, { recursive: true });

const srv = await startServer({ machines: 60, rate: 600 });
const browser = await launchBrowser();
try {
  const { machines } = await waitFor(async () => {
    const r = await api(srv.url, '/api/v1/machines');
    return r.count === 60 ? r : undefined;
  });
  const ids = machines.map((m) => m.id).sort();
  const alarmed = ids[2];
  const shown = ids[0];
  // one machine in alarm, a threshold and a note on the machine shown
  await api(srv.url, `/api/v1/machines/${encodeURIComponent(alarmed)}`, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/merge-patch+json' },
    body: JSON.stringify({ thresholds: { temp: { high: 0, for: '0s' } } }),
  });
  const temp = machines.find((m) => m.id === shown).metrics.temp.value;
  await api(srv.url, `/api/v1/machines/${encodeURIComponent(shown)}`, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/merge-patch+json' },
    body: JSON.stringify({ thresholds: { temp: { high: Math.round(temp + 3), low: Math.round(temp - 8) } } }),
  });

  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  await ctx.addInitScript(() => localStorage.setItem('twinline.author', 'shift lead'));
  const page = await ctx.newPage();

  // machine view, dark: wait for 45 s of streamed data in the live window
  await page.addInitScript(() => localStorage.setItem('twinline.theme', 'dark'));
  await page.goto(`${srv.url}/#/m/${encodeURIComponent(shown)}`);
  await page.waitForSelector('[data-testid=conn][data-state=live]');
  await page.getByLabel('Note', { exact: true }).fill('Spindle bearing replaced; watch vibration for the next hour.');
  await page.getByRole('button', { name: 'Post note' }).click();
  await page.locator('[data-testid=notes]', { hasText: 'Spindle bearing' }).waitFor();
  const started = Date.now();
  await page.waitForFunction((t) => Number(document.querySelector('[data-testid=chart]')?.dataset.lastTs) > t + 45_000, started, {
    timeout: 90_000,
  });
  await page.evaluate(() => {
    document.activeElement?.blur();
    document.querySelector('main').scrollTop = 0;
  });
  await page.waitForFunction(() => document.querySelector('main').scrollTop === 0);
  await page.screenshot({ path: join(out, 'machine.png'), fullPage: false });

  // fleet, light, grouped by site / line
  const light = await ctx.newPage();
  await light.addInitScript(() => localStorage.setItem('twinline.theme', 'light'));
  await light.goto(`${srv.url}/#/?group=line`);
  await light.waitForFunction(() => document.querySelectorAll('.tile').length >= 20);
  await light.waitForFunction(() => Number(document.querySelector('[data-testid=count-alarm] strong')?.textContent) >= 1);
  // sparklines: 2 s buckets; wait until they show half a minute
  await light.waitForFunction(
    () => [...document.querySelectorAll('.spark path')].filter((p) => (p.getAttribute('d').match(/L/g) ?? []).length >= 14).length >= 20,
    undefined,
    { timeout: 90_000 },
  );
  await light.screenshot({ path: join(out, 'fleet.png') });

  await light.goto(`${srv.url}/#/alarms`);
  await light.locator(`[data-testid=active-alarms] tr[data-machine="${alarmed}"]`).waitFor();
  await light.screenshot({ path: join(out, 'alarms.png') });
  console.log(`wrote ${out}/fleet.png, machine.png, alarms.png`);
} finally {
  await browser.close();
  await srv.stop();
  removeDir(srv.dataDir);
}
