// End-to-end tests of the dashboard's twin control (issue 15) in Debian's
// Chromium against the real twinline binary: the twin panel (desired vs
// reported, the delta, a setpoint changed with a confirmation and If-Match,
// a stale version refused), commands from the registry's schema with their
// live lifecycle, the state timeline, fleet tiles coloured by state, the
// OEE view, and the operate scope. The device is played over HTTP
// (control-lib.mjs). Synchronisation waits on conditions, never on fixed
// sleeps.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { seedControlled, setDesired, twinOf } from './control-lib.mjs';
import { chromiumMissing, createToken, launchBrowser, removeDir, startServer, tempDir, waitFor } from './lib.mjs';

const skip = chromiumMissing();
if (skip) console.log(`# SKIP browser tests: ${skip}`);

const ID = 'e2e-press-1';
const OTHER = 'e2e-press-2';

function watchErrors(page, errors) {
  page.on('pageerror', (e) => errors.push(e.message));
}

const row = (page, field) => page.locator(`[data-testid=twin-panel] tr[data-field="${field}"]`);

describe('twin control', { skip }, () => {
  let srv;
  let browser;
  let dev;

  before(async () => {
    srv = await startServer({ machines: 2, rate: 20, extra: ['--out-of-order-window', '1h'] });
    browser = await launchBrowser();
    dev = await seedControlled(srv.url, ID);
    await seedControlled(srv.url, OTHER);
  });

  after(async () => {
    await browser?.close();
    await srv?.stop();
    if (srv) removeDir(srv.dataDir);
  });

  it('shows desired next to reported with the delta and each field’s age, and follows the device live', async () => {
    const errors = [];
    const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
    watchErrors(page, errors);
    await page.goto(`${srv.url}/#/m/${ID}`);
    await row(page, 'tempSetpoint').waitFor();
    assert.equal(await row(page, 'tempSetpoint').getAttribute('data-pending'), 'true');
    assert.equal((await row(page, 'tempSetpoint').locator('[data-testid=desired] .twin-value').textContent()).trim(), '180');
    assert.equal((await row(page, 'tempSetpoint').locator('[data-testid=reported] .twin-value').textContent()).trim(), '175');
    assert.equal(await row(page, 'mode').getAttribute('data-pending'), 'false');
    // reported only: no desired, not in the delta
    assert.equal((await row(page, 'fw').locator('[data-testid=desired]').textContent()).trim(), '—');
    // ages from the metadata
    assert.match(await row(page, 'tempSetpoint').locator('[data-testid=reported] .age').textContent(), /ago|just now/);
    // the device catches up: the stream's twin message clears the delta without a reload
    await dev.report({ tempSetpoint: 180 });
    await page.locator('[data-testid=twin-panel] tr[data-field="tempSetpoint"][data-pending=false]').waitFor();
    assert.deepEqual(errors, []);
    await page.close();
  });

  it('changes a setpoint after a confirmation, with If-Match, and refuses a stale version', async () => {
    const errors = [];
    const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
    watchErrors(page, errors);
    const patches = [];
    page.on('request', (r) => {
      if (r.method() === 'PATCH' && r.url().endsWith('/twin/desired')) patches.push({ ifMatch: r.headers()['if-match'], body: r.postData() });
    });
    await page.goto(`${srv.url}/#/m/${ID}`);
    await row(page, 'tempSetpoint').waitFor();
    const before = await twinOf(srv.url, ID);

    await page.getByRole('button', { name: 'Edit tempSetpoint' }).click();
    const form = page.locator('form.setpoint-form');
    // out of the schema's range: refused in the form, nothing sent
    await form.locator('input').fill('300');
    await form.getByRole('button', { name: 'Review…' }).click();
    await form.getByRole('alert').filter({ hasText: 'must be ≤ 250' }).waitFor();
    assert.equal(await page.locator('[data-testid=confirm]').count(), 0);

    await form.locator('input').fill('190');
    await form.getByRole('button', { name: 'Review…' }).click();
    const dialog = page.locator('[data-testid=confirm]');
    await dialog.waitFor();
    assert.match(await dialog.textContent(), /190/);
    await dialog.getByRole('button', { name: 'Apply' }).click();
    await page.locator('[data-testid=twin-panel] tr[data-field="tempSetpoint"] [data-testid=desired] .twin-value', { hasText: '190' }).waitFor();
    assert.equal(patches.length, 1);
    assert.equal(patches[0].ifMatch, `"${before.version}"`);
    assert.deepEqual(JSON.parse(patches[0].body), { tempSetpoint: 190 });
    const after1 = await twinOf(srv.url, ID);
    assert.equal(after1.desired.tempSetpoint, 190);
    assert.equal(after1.version, before.version + 1);
    assert.equal(await row(page, 'tempSetpoint').getAttribute('data-pending'), 'true');

    // someone else changes desired while the dialog is open: 412, nothing overwritten
    await page.getByRole('button', { name: 'Edit tempSetpoint' }).click();
    await form.locator('input').fill('200');
    await form.getByRole('button', { name: 'Review…' }).click();
    await dialog.waitFor();
    await setDesired(srv.url, ID, { tempSetpoint: 210 });
    await dialog.getByRole('button', { name: 'Apply' }).click();
    await page.getByRole('alert').filter({ hasText: 'changed meanwhile' }).waitFor();
    assert.equal((await twinOf(srv.url, ID)).desired.tempSetpoint, 210);
    await page.locator('[data-testid=twin-panel] tr[data-field="tempSetpoint"] [data-testid=desired] .twin-value', { hasText: '210' }).waitFor();
    assert.deepEqual(errors, []);
    await page.close();
  });

  it('sends a command from its params form and shows its lifecycle live', async () => {
    const errors = [];
    const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
    watchErrors(page, errors);
    await page.goto(`${srv.url}/#/m/${ID}`);
    const panel = page.locator('[data-testid=commands-panel]');
    await panel.waitFor();
    const names = await panel.locator('[data-command]').evaluateAll((els) => els.map((e) => e.dataset.command));
    assert.deepEqual(names, ['reset', 'start', 'stop']);

    await panel.locator('[data-command=reset]').click();
    const form = panel.locator('[data-testid=command-form]');
    // the params form from the schema: counter, an enum with its one value chosen
    assert.deepEqual(await form.locator('select option').evaluateAll((els) => els.map((e) => e.textContent)), ['parts']);
    await form.getByRole('button', { name: 'Send reset…' }).click();
    await page.locator('[data-testid=confirm]').getByRole('button', { name: 'Send' }).click();

    const item = panel.locator('[data-testid=command-history] li[data-command-id]').first();
    await item.waitFor();
    const cmdId = await item.getAttribute('data-command-id');
    assert.equal(await item.getAttribute('data-state'), 'pending');
    // the device answers: accepted, then succeeded; the stream's command messages move the item on
    const pending = await waitFor(async () => (await dev.pending()).find((c) => c.id === cmdId), { what: `command ${cmdId} pending` });
    assert.equal(pending.name, 'reset');
    assert.deepEqual(pending.params, { counter: 'parts' });
    await dev.respond(cmdId, { state: 'accepted' });
    await panel.locator(`li[data-command-id="${cmdId}"][data-state=accepted]`).waitFor();
    await dev.respond(cmdId, { state: 'succeeded', result: { counter: 'parts', was: 600 } });
    const done = panel.locator(`li[data-command-id="${cmdId}"][data-state=succeeded]`);
    await done.waitFor();
    const steps = await done.locator('.command-steps li').allTextContents();
    // "delivered" is there when listing the pending commands counted as the device's fetch
    assert.deepEqual(
      steps.map((s) => s.split(' ')[0]).filter((s) => s !== 'delivered'),
      ['pending', 'accepted', 'succeeded'],
    );
    assert.match(await done.textContent(), /"was":600/);
    assert.deepEqual(errors, []);
    await page.close();
  });

  it('draws the state timeline above the charts and extends it live', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
    await page.goto(`${srv.url}/#/m/${ID}?range=1h`);
    const strip = page.locator('[data-testid=state-timeline]');
    await page.waitForFunction(() => Number(document.querySelector('[data-testid=state-timeline]')?.dataset.segments) >= 5);
    const values = await strip.locator('.state-seg').evaluateAll((els) => els.map((e) => e.dataset.value));
    assert.deepEqual(values, ['RUNNING', 'DOWN', 'RUNNING', 'IDLE', 'RUNNING']);
    assert.equal(await strip.getAttribute('data-current'), 'RUNNING');
    // the strip sits above the chart
    const [s, c] = await Promise.all([strip.boundingBox(), page.locator('[data-testid=chart]').boundingBox()]);
    assert.ok(s.y + s.height <= c.y, `strip ${JSON.stringify(s)} above chart ${JSON.stringify(c)}`);
    await dev.send([{ ageMs: 0, state: 'DOWN' }]);
    await page.locator('[data-testid=state-timeline][data-current=DOWN]').waitFor();
    await page.close();
  });

  it('colours fleet tiles by state', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    await page.goto(`${srv.url}/`);
    const tile = page.locator(`.tile[data-machine="${OTHER}"]`);
    await tile.waitFor();
    await page.locator(`.tile[data-machine="${OTHER}"][data-state=RUNNING]`).waitFor();
    assert.match(await tile.getAttribute('class'), /\bstate-running\b/);
    assert.equal((await tile.locator('[data-testid=tile-state]').textContent()).trim(), 'RUNNING');
    await seedState(srv.url, OTHER, 'DOWN');
    await page.locator(`.tile[data-machine="${OTHER}"][data-state=DOWN]`).waitFor({ timeout: 20_000 });
    assert.match(await tile.getAttribute('class'), /\bstate-down\b/);
    await page.close();
  });

  it('shows OEE per line with availability, performance and quality and the top downtime reasons', async () => {
    const errors = [];
    const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
    watchErrors(page, errors);
    await page.goto(`${srv.url}/#/`);
    await page.getByRole('link', { name: 'OEE' }).click();
    await page.waitForFunction(() => location.hash === '#/oee');
    const line = page.locator('[data-testid=oee] section[data-line="e2e/L1"]');
    await line.waitFor();
    const machines = await line.locator('tr[data-machine]').evaluateAll((els) => els.map((e) => e.dataset.machine).sort());
    assert.deepEqual(machines, [ID, OTHER]);
    const oee = await line.locator(`tr[data-machine="${ID}"] [data-testid=oee-value]`).textContent();
    assert.match(oee, /^\d+\.\d %$/);
    // DOWN and IDLE were the non-running states in planned time
    const reasons = await page.locator('[data-testid=oee] [data-testid=downtime]').first().locator('li').evaluateAll((els) => els.map((e) => e.dataset.state));
    assert.ok(reasons.includes('DOWN') && reasons.includes('IDLE'), `downtime reasons ${reasons}`);
    // the day view is a link of its own
    await page.getByRole('button', { name: 'last 24 h' }).click();
    await page.waitForFunction(() => location.hash === '#/oee?period=day');
    await line.waitFor();
    assert.deepEqual(errors, []);
    await page.close();
  });
});

/** One state event for machine id, now. */
async function seedState(url, id, state) {
  const r = await fetch(`${url}/api/v1/events`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ machineId: id, temp: 150, states: { state } }),
  });
  assert.ok(r.ok, `POST /api/v1/events: ${r.status}`);
}

describe('twin control needs the operate scope', { skip }, () => {
  let srv;
  let browser;
  const tok = {};

  before(async () => {
    const dataDir = tempDir();
    tok.admin = await createToken(dataDir, 'e2e-admin', 'read,operate,admin,ingest');
    tok.reader = await createToken(dataDir, 'e2e-reader', 'read');
    tok.operator = await createToken(dataDir, 'e2e-operator', 'read,operate');
    srv = await startServer({ dataDir, machines: 1, rate: 10, extra: ['--out-of-order-window', '1h'] });
    browser = await launchBrowser();
    await seedControlled(srv.url, ID, { token: tok.admin });
  });

  after(async () => {
    await browser?.close();
    await srv?.stop();
    if (srv) removeDir(srv.dataDir);
  });

  async function signedIn(token) {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
    await page.goto(`${srv.url}/#/m/${ID}`);
    await page.locator('[data-testid=sign-in]').waitFor();
    await page.getByLabel('API token').fill(token);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await row(page, 'tempSetpoint').waitFor();
    await page.locator('[data-testid=commands-panel] [data-command=reset]').waitFor();
    return page;
  }

  it('shows a read-only identity the twin and the commands but lets it change nothing', async () => {
    const page = await signedIn(tok.reader);
    assert.equal(await page.getByRole('button', { name: 'Edit tempSetpoint' }).isDisabled(), true);
    for (const n of ['reset', 'start', 'stop']) {
      assert.equal(await page.locator(`[data-command=${n}]`).isDisabled(), true, `command ${n}`);
    }
    await page.getByText('Changing setpoints needs the operate scope.').waitFor();
    await page.getByText('Sending commands needs the operate scope.').waitFor();
    await page.close();
  });

  it('lets an operator change a setpoint (the CSRF token and If-Match go along)', async () => {
    const page = await signedIn(tok.operator);
    const edit = page.getByRole('button', { name: 'Edit tempSetpoint' });
    assert.equal(await edit.isDisabled(), false);
    await edit.click();
    await page.locator('form.setpoint-form input').fill('120');
    await page.getByRole('button', { name: 'Review…' }).click();
    await page.locator('[data-testid=confirm]').getByRole('button', { name: 'Apply' }).click();
    await waitFor(async () => (await twinOf(srv.url, ID, tok.admin)).desired.tempSetpoint === 120, { what: 'desired tempSetpoint 120' });
    await page.close();
  });
});
