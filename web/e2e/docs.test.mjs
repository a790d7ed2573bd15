// End-to-end test of the API reference at /docs (Swagger UI, issue 17) in
// Debian's Chromium against the real twinline binary, started with an API
// token so that every call needs credentials: the page renders every
// operation of the OpenAPI document, a call tried without credentials is
// refused, the same call after "Authorize" with the token answers 200,
// and a browser signed in on the dashboard calls with its session (a
// state-changing call with the session's CSRF token). The page must load
// nothing from another origin and trip no Content-Security-Policy rule.
// Synchronisation waits on conditions, never on fixed sleeps.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { api, bearer, chromiumMissing, createToken, launchBrowser, removeDir, startServer, tempDir } from './lib.mjs';

const skip = chromiumMissing();
if (skip) console.log(`# SKIP browser tests: ${skip}`);

/**
 * Opens a page that records what must not happen: CSP violations (the
 * securitypolicyviolation event, and Chromium's console message), page
 * errors, and requests to another origin.
 */
async function watchedPage(context, origin) {
  const page = await context.newPage();
  const bad = [];
  page.on('pageerror', (e) => bad.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) bad.push(`console: ${m.text()}`);
  });
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(origin + '/') && !u.startsWith('data:')) bad.push(`request to another origin: ${u}`);
  });
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI} (${e.sourceFile}:${e.lineNumber})`),
    );
  });
  const problems = async () => [...bad, ...(await page.evaluate(() => window.__cspViolations))];
  return { page, problems };
}

/** Opens the operation operationId, switches it to "Try it out" and executes it; returns the status shown. */
async function tryIt(page, operationId) {
  const op = page.locator(`#operations-default-${operationId}`);
  if (!(await op.locator('.execute').count())) {
    if (!(await op.locator('.try-out__btn').count())) await op.locator('.opblock-summary-control').click();
    await op.locator('.try-out__btn').click();
  }
  // a previous answer is cleared first, so the status read is this call's
  if (await op.locator('.btn-clear').count()) await op.locator('.btn-clear').click();
  await op.locator('.execute').click();
  const status = op.locator('.live-responses-table .response .response-col_status');
  await status.waitFor({ timeout: 20_000 });
  return { status: (await status.innerText()).trim(), body: await op.locator('.live-responses-table .response-col_description pre').first().innerText() };
}

describe('API docs at /docs', { skip }, () => {
  let srv;
  let browser;
  let token;
  let operations;

  before(async () => {
    const dataDir = tempDir();
    token = await createToken(dataDir, 'e2e-docs-reader', 'read');
    srv = await startServer({ dataDir, machines: 3, rate: 20 });
    browser = await launchBrowser();
    const r = await fetch(`${srv.url}/api/v1/machines`);
    assert.equal(r.status, 401, 'GET /api/v1/machines without a token');
    const doc = await api(srv.url, '/api/openapi.json');
    operations = Object.values(doc.paths).flatMap((item) => Object.keys(item).filter((m) => ['get', 'put', 'post', 'delete', 'patch'].includes(m)));
  });

  after(async () => {
    await browser?.close();
    await srv?.stop();
    if (srv) removeDir(srv.dataDir);
  });

  it('renders every operation; a call is tried without, then with the token', async () => {
    const context = await browser.newContext();
    const { page, problems } = await watchedPage(context, srv.url);
    const res = await page.goto(`${srv.url}/docs`);
    const csp = res.headers()['content-security-policy'];
    assert.ok(csp && !csp.includes('unsafe-eval') && !csp.includes('unsafe-inline'), `CSP ${csp}`);
    await page.locator('.opblock').first().waitFor();
    assert.equal(await page.locator('.opblock').count(), operations.length, 'operations rendered');
    assert.equal(await page.locator('a[href="/api/asyncapi.json"]').count(), 1, 'the AsyncAPI document is linked');

    const anonymous = await tryIt(page, 'listMachines');
    assert.equal(anonymous.status, '401', `without credentials: ${anonymous.body}`);

    await page.locator('.auth-wrapper .authorize').click();
    await page.locator('#auth-bearer-value').fill(token);
    await page.locator('.auth-container', { has: page.locator('#auth-bearer-value') }).locator('button[type=submit]').click();
    await page.locator('.auth-container .btn-done').first().click();

    const authorized = await tryIt(page, 'listMachines');
    assert.equal(authorized.status, '200', `with the token: ${authorized.body}`);
    assert.match(authorized.body, /"machines"/);
    const curl = await page.locator('#operations-default-listMachines .curl-command').innerText();
    assert.match(curl, /Authorization: Bearer/);
    assert.deepEqual(await problems(), []);
    await context.close();
  });

  it('a browser signed in on the dashboard calls with its session and CSRF token', async () => {
    const context = await browser.newContext();
    const signIn = await context.request.post(`${srv.url}/api/v1/session`, { data: { token } });
    assert.equal(signIn.status(), 200, await signIn.text());
    const { page, problems } = await watchedPage(context, srv.url);
    await page.goto(`${srv.url}/docs`);
    await page.locator('.opblock').first().waitFor();

    const list = await tryIt(page, 'listMachines');
    assert.equal(list.status, '200', `GET with the session: ${list.body}`);
    // a state-changing call: the session alone is refused (403) without
    // the X-CSRF-Token header the page adds
    const ticket = await tryIt(page, 'createStreamTicket');
    assert.equal(ticket.status, '201', `POST with the session: ${ticket.body}`);
    assert.match(ticket.body, /"ticket"/);
    assert.deepEqual(await problems(), []);
    await context.close();
  });
});
