// Takes the screenshots of the twin control (issue 15) against the real
// binary's demo fleet (twinline serve --demo: simulated machines with a
// desired schema, commands, states and part counters, answering as devices):
//   docs/img/twin.png (machine page, dark: state timeline, twin panel with a
//   delta, commands with their history), docs/img/oee.png (OEE view, light),
//   docs/img/fleet-states.png (tiles coloured by state).
// The OEE needs the demo to run a while: it waits until every line has an
// OEE figure, then a little longer for its downtime to show.
// Run: make web-screenshots (or TWINLINE_BIN=bin/twinline npm run screenshots:control)
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setDesired, twinOf } from './control-lib.mjs';
import { api, chromiumMissing, launchBrowser, removeDir, repoRoot, startServer, waitFor } from './lib.mjs';

const skip = chromiumMissing();
if (skip) {
  console.error(skip);
  process.exit(1);
}
const out = join(repoRoot, 'docs/img');
mkdirSync(out, { recursive: true });

const enc = encodeURIComponent;
const VIEW = { width: 1280, height: 800 };
const TWIN_VIEW = { width: 1280, height: 960 };

const srv = await startServer({ machines: 24, rate: 400 });
const browser = await launchBrowser();
try {
  // the machine shown: one running; stopped from the API while the OEE
  // gathers, started again before the screenshot (its state timeline)
  const { machines } = await waitFor(async () => {
    const r = await api(srv.url, '/api/v1/machines');
    return r.machines.some((m) => m.states?.state?.value === 'RUNNING') ? r : undefined;
  }, { what: 'a running machine' });
  const shown = machines.filter((m) => m.states?.state?.value === 'RUNNING').map((m) => m.id).sort()[0];
  await command(shown, 'stop');

  // every line with an OEE over at least 90 s of planned time per machine, some with downtime
  const started = Date.now();
  await waitFor(
    async () => {
      const now = Date.now();
      const r = await api(srv.url, `/api/v1/oee?from=${now - 3_600_000}&to=${now}`);
      const per = (l) => r.machines.filter((m) => m.site === l.site && m.line === l.line).length;
      const ok =
        r.lines.length > 0 &&
        r.lines.every((l) => l.total.oee !== null && l.total.plannedMs >= per(l) * 90_000) &&
        r.lines.some((l) => l.total.downtime.length > 0);
      return ok ? r : undefined;
    },
    { what: 'an OEE on every line', timeoutMs: 300_000, intervalMs: 2_000 },
  );
  console.log(`OEE ready after ${Math.round((Date.now() - started) / 1000)} s`);
  await command(shown, 'start');

  // A delta: the simulated device applies tempSetpoint and mode at once, so
  // the schema gets a setting its firmware does not know (rampRate), which
  // stays desired and unreported.
  await api(srv.url, `/api/v1/machines/${enc(shown)}`, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/merge-patch+json' },
    body: JSON.stringify({ desiredSchema: { properties: { rampRate: { type: 'number', minimum: 0.1, maximum: 10 } } } }),
  });
  const reportedTemp = Number(machines.find((m) => m.id === shown).metrics?.temp?.value ?? 50);
  await setDesired(srv.url, shown, { mode: 'auto', tempSetpoint: Math.max(20, Math.min(250, Math.round(reportedTemp) + 10)), rampRate: 2.5 });

  const ctx = await browser.newContext({ viewport: VIEW, deviceScaleFactor: 1 });
  const page = await ctx.newPage();
  await page.setViewportSize(TWIN_VIEW);
  await page.addInitScript(() => localStorage.setItem('twinline.theme', 'dark'));
  await page.goto(`${srv.url}/#/m/${enc(shown)}?metrics=temp`);
  await page.locator('[data-testid=twin-panel] tr[data-field=rampRate][data-pending=true]').waitFor();
  // a reset from the dashboard, answered by the simulated device
  await page.locator('[data-testid=commands-panel] [data-command=reset]').click();
  await page.getByRole('button', { name: 'Send reset…' }).click();
  await page.locator('[data-testid=confirm]').getByRole('button', { name: 'Send' }).click();
  await page.locator('[data-testid=command-history] li[data-command-id][data-state=succeeded]').first().waitFor();
  await page.waitForFunction(() => Number(document.querySelector('[data-testid=state-timeline]')?.dataset.segments) >= 3);
  await page.locator('[data-testid=chart] .main-svg').first().waitFor();
  await page.evaluate(() => {
    document.activeElement?.blur();
    document.querySelector('main').scrollTop = 0;
  });
  const twin = await twinOf(srv.url, shown);
  if (!('rampRate' in twin.delta)) throw new Error(`twin.png: no delta: ${JSON.stringify(twin)}`);
  await page.screenshot({ path: join(out, 'twin.png') });

  const light = await ctx.newPage();
  await light.addInitScript(() => localStorage.setItem('twinline.theme', 'light'));
  await light.goto(`${srv.url}/#/oee`);
  await light.locator('[data-testid=oee] section[data-line] [data-testid=oee-value]').first().waitFor();
  await light.screenshot({ path: join(out, 'oee.png') });

  await light.goto(`${srv.url}/#/?group=line`);
  await light.waitForFunction(() => document.querySelectorAll('.tile[data-state]').length >= 20);
  await light.screenshot({ path: join(out, 'fleet-states.png') });
  console.log(`wrote ${out}/twin.png, oee.png, fleet-states.png (machine ${shown})`);
} finally {
  await browser.close();
  await srv.stop();
  removeDir(srv.dataDir);
}

/** Sends command name to machine id from the API and waits until its device has answered it. */
async function command(id, name) {
  const c = await api(srv.url, `/api/v1/machines/${enc(id)}/commands`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  return waitFor(async () => {
    const x = await api(srv.url, `/api/v1/machines/${enc(id)}/commands/${enc(c.id)}`);
    return ['succeeded', 'failed', 'rejected', 'expired'].includes(x.state) ? x : undefined;
  }, { what: `command ${name} answered`, timeoutMs: 60_000 });
}
