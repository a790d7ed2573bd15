// End-to-end tests of the dashboard's sign-in (issue 12) in Debian's
// Chromium against the real twinline binary, started with API tokens in its
// data directory so that every request needs a sign-in. Run alone with
// `npm run e2e:auth` (TWINLINE_BIN: a binary with the `token` command).
// Synchronisation waits on conditions, never on fixed sleeps.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { api, bearer, chromiumMissing, createToken, launchBrowser, removeDir, startServer, tempDir, waitFor } from './lib.mjs';

const skip = chromiumMissing();
if (skip) console.log(`# SKIP browser tests: ${skip}`);

const DEMO = 3; // simulated machines, all of site plant-1

/** Fails the test on any uncaught page error. */
function watchErrors(page, errors) {
  page.on('pageerror', (e) => errors.push(e.message));
}

/** Signs in on the sign-in page with token (the page must show it). */
async function signIn(page, token) {
  await page.locator('[data-testid=sign-in]').waitFor();
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
}

const tileIds = (page) => page.$$eval('.tile', (els) => els.map((e) => e.dataset.machine).sort());

describe('dashboard with sign-in required', { skip }, () => {
  let srv;
  let browser;
  const tok = {};

  before(async () => {
    const dataDir = tempDir();
    // tokens before the server starts: it requires them from the first request
    tok.admin = await createToken(dataDir, 'e2e-admin', 'read,admin');
    tok.ingest = await createToken(dataDir, 'e2e-ingest', 'ingest');
    tok.reader = await createToken(dataDir, 'e2e-reader', 'read');
    tok.lyon = await createToken(dataDir, 'e2e-lyon-op', 'read,operate', 'lyon');
    srv = await startServer({ dataDir, machines: DEMO, rate: 20 });
    browser = await launchBrowser();

    // without credentials the API refuses
    const r = await fetch(`${srv.url}/api/v1/machines`);
    assert.equal(r.status, 401, 'GET /api/v1/machines without a token');

    // two machines of two sites, each with a temperature alarm (above 0 for 0 s)
    for (const [id, site, line] of [
      ['lyon-1', 'lyon', 'A'],
      ['paris-1', 'paris', 'B'],
    ]) {
      await api(srv.url, `/api/v1/machines/${id}`, {
        method: 'PUT',
        headers: bearer(tok.admin, { 'Content-Type': 'application/json' }),
        body: JSON.stringify({ site, line, thresholds: { temp: { high: 0, for: '0s' } } }),
      });
    }
    await api(srv.url, '/api/v1/events', {
      method: 'POST',
      headers: bearer(tok.ingest, { 'Content-Type': 'application/json' }),
      body: JSON.stringify([
        { machineId: 'lyon-1', temp: 50 },
        { machineId: 'paris-1', temp: 60 },
      ]),
    });
    await waitFor(
      async () => {
        const a = await api(srv.url, '/api/v1/alarms?state=active', { headers: bearer(tok.admin) });
        const on = new Set(a.alarms.map((x) => x.machine));
        return on.has('lyon-1') && on.has('paris-1');
      },
      { what: 'the alarms of lyon-1 and paris-1' },
    );
  });

  after(async () => {
    await browser?.close();
    await srv?.stop();
    if (srv) removeDir(srv.dataDir);
  });

  it('shows the sign-in page, and the server detail for a bad token', async () => {
    const errors = [];
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await ctx.newPage();
    watchErrors(page, errors);
    await page.goto(`${srv.url}/`);
    await signIn(page, 'tl_not_a_real_token');
    const msg = page.locator('[data-testid=sign-in-error]');
    await msg.waitFor();
    assert.ok((await msg.textContent()).trim().length > 0, 'an empty error message');
    // still on the sign-in page, nothing of the app shown
    assert.equal(await page.locator('[data-testid=sign-in]').count(), 1);
    assert.equal(await page.locator('.tile').count(), 0);
    assert.equal(await page.locator('[data-testid=identity]').count(), 0);
    assert.deepEqual(errors, []);
    await ctx.close();
  });

  it('lets a read-only identity see the fleet and alarms but not act, and signs out', async () => {
    const errors = [];
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await ctx.newPage();
    watchErrors(page, errors);
    await page.goto(`${srv.url}/`);
    await signIn(page, tok.reader);
    // the fleet: every machine (the token has no site restriction)
    await page.waitForFunction((n) => document.querySelectorAll('.tile').length === n, DEMO + 2);
    await page.locator('[data-testid=identity]', { hasText: 'e2e-reader' }).waitFor();
    // the stream connects with a ticket
    await page.waitForSelector('[data-testid=conn][data-state=live]');
    // the session cookie is HttpOnly: the page cannot read it
    assert.equal(await page.evaluate(() => document.cookie.includes('twinline_session')), false);
    const cookie = (await ctx.cookies()).find((c) => c.name === 'twinline_session');
    assert.ok(cookie?.httpOnly, 'twinline_session is not HttpOnly');
    assert.equal(cookie.sameSite, 'Strict');

    // alarms: listed, without an Acknowledge button
    await page.goto(`${srv.url}/#/alarms`);
    await page.locator('[data-testid=active-alarms] tr[data-machine="lyon-1"]').waitFor();
    await page.locator('[data-testid=active-alarms] tr[data-machine="paris-1"]').waitFor();
    assert.equal(await page.getByRole('button', { name: /Acknowledge/ }).count(), 0, 'an Ack button without operate');

    // machine view: notes readable, no note form
    await page.goto(`${srv.url}/#/m/lyon-1`);
    await page.locator('[data-testid=notes]').waitFor();
    await page.getByText('Writing notes needs the operate scope.').waitFor();
    assert.equal(await page.getByRole('button', { name: 'Post note' }).count(), 0, 'a note form without operate');

    // sign out: back to the sign-in page, also after a reload (the cookie is gone)
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.locator('[data-testid=sign-in]').waitFor();
    await page.reload();
    await page.locator('[data-testid=sign-in]').waitFor();
    assert.equal(await page.locator('.tile').count(), 0);
    assert.deepEqual(errors, []);
    await ctx.close();
  });

  it('shows a site-restricted operator only the machines and alarms of its site', async () => {
    const errors = [];
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await ctx.newPage();
    watchErrors(page, errors);
    await page.goto(`${srv.url}/`);
    await signIn(page, tok.lyon);
    await page.locator('[data-testid=identity]', { hasText: 'e2e-lyon-op' }).waitFor();
    await page.locator('[data-testid=identity]', { hasText: 'lyon' }).waitFor();
    await page.waitForSelector('[data-testid=conn][data-state=live]');
    // the fleet: lyon-1 only, from the list and from the stream (paris-1 and the demo machines report all along)
    await page.waitForFunction(() => document.querySelector('[data-testid=count-all] strong')?.textContent === '1');
    await api(srv.url, '/api/v1/events', {
      method: 'POST',
      headers: bearer(tok.ingest, { 'Content-Type': 'application/json' }),
      body: JSON.stringify([
        { machineId: 'paris-1', temp: 61 },
        { machineId: 'lyon-1', temp: 51.5 },
      ]),
    });
    await page.locator('.tile[data-machine="lyon-1"]', { hasText: '51.50' }).waitFor();
    assert.deepEqual(await tileIds(page), ['lyon-1']);

    // alarms: lyon-1's only; the operator may acknowledge it, and the server names who did
    await page.goto(`${srv.url}/#/alarms`);
    const row = page.locator('[data-testid=active-alarms] tr[data-machine="lyon-1"]');
    await row.waitFor();
    const machines = await page.$$eval('[data-testid=active-alarms] tr[data-machine]', (rs) => rs.map((r) => r.dataset.machine));
    assert.deepEqual([...new Set(machines)], ['lyon-1']);
    const journal = await page.$$eval('[data-testid=journal] tbody tr a', (as) => as.map((a) => a.textContent));
    assert.ok(!journal.includes('paris-1'), `the journal shows paris-1: ${journal}`);
    await row.getByRole('button', { name: 'Acknowledge…' }).click();
    await row.getByLabel('Note').fill('seen from lyon');
    await row.getByRole('button', { name: 'Acknowledge', exact: true }).click();
    await row.locator('[data-testid=ack-state][data-acked=true]', { hasText: 'e2e-lyon-op' }).waitFor();

    // the operator may write notes (the CSRF header goes with it)
    await page.goto(`${srv.url}/#/m/lyon-1`);
    const text = `lyon handover ${Date.now()}`;
    await page.getByLabel('Note', { exact: true }).fill(text);
    await page.getByRole('button', { name: 'Post note' }).click();
    await page.locator('[data-testid=notes]', { hasText: text }).waitFor();

    // a direct link to a machine of another site: not found, like one that does not exist
    await page.goto(`${srv.url}/#/m/paris-1`);
    await page.locator('[data-testid=not-found]', { hasText: 'paris-1' }).waitFor();
    assert.equal(await page.locator('[data-testid=chart]').count(), 0);
    assert.deepEqual(errors, []);
    await ctx.close();
  });
});
