// Helpers for the browser tests, the screenshots and the benchmark: start
// the real twinline binary on a free loopback port, and Debian's Chromium
// through playwright-core (Playwright's own browser download is not used).
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];

/** The binary under test: $TWINLINE_BIN, else bin/twinline of this repo. */
export function binaryPath() {
  const bin = process.env.TWINLINE_BIN || join(repoRoot, 'bin/twinline');
  if (!existsSync(bin)) throw new Error(`twinline binary ${bin} not found: run "make build" (or set TWINLINE_BIN)`);
  return bin;
}

/**
 * Whether the browser tests can run. Without Chromium they fail under
 * CI=true and are skipped (with the reason) otherwise.
 */
export function chromiumMissing() {
  if (existsSync(CHROMIUM)) return undefined;
  const msg = `Chromium not found at ${CHROMIUM}: apt-get update && apt-get install -y chromium`;
  if (process.env.CI === 'true') throw new Error(msg);
  return msg;
}

export async function launchBrowser() {
  const { chromium } = await import('playwright-core');
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

export function tempDir(prefix = 'twinline-e2e-') {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

/** Polls fn until it returns a truthy value or timeoutMs passes. */
export async function waitFor(fn, { timeoutMs = 20_000, intervalMs = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Starts `twinline serve --demo` (or, with demo: false, a server without
 * the simulator: an empty fleet) and waits until /readyz answers 200.
 * Returns { url, port, dataDir, stop(signal) }.
 */
export async function startServer({ port, dataDir, machines = 20, rate = 200, demo = true, extra = [] } = {}) {
  port ??= await freePort();
  dataDir ??= tempDir();
  const args = [
    'serve',
    ...(demo ? ['--demo', '--demo-machines', String(machines), '--demo-rate', String(rate)] : []),
    '--listen',
    `127.0.0.1:${port}`,
    '--data-dir',
    dataDir,
    '--log-level',
    'warn',
    ...extra,
  ];
  const proc = spawn(binaryPath(), args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  const exited = new Promise((res) => proc.on('exit', (code, signal) => res({ code, signal })));
  const url = `http://127.0.0.1:${port}`;
  let dead = false;
  void exited.then(() => (dead = true));
  await waitFor(
    async () => {
      if (dead) throw new Error(`twinline exited early: ${stderr}`);
      const r = await fetch(`${url}/readyz`);
      return r.ok;
    },
    { timeoutMs: 30_000, what: `twinline on ${url}` },
  ).catch((err) => {
    proc.kill('SIGKILL');
    throw new Error(`${err.message}\n${stderr}`);
  });
  return {
    url,
    port,
    dataDir,
    proc,
    async stop(signal = 'SIGTERM') {
      if (!dead) proc.kill(signal);
      return exited;
    },
  };
}

export async function api(url, path, init) {
  const r = await fetch(url + path, init);
  const text = await r.text();
  if (!r.ok) throw new Error(`${init?.method ?? 'GET'} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

/**
 * Creates an API token with `twinline token create` in dataDir (before the
 * server starts, or while it runs: it notices) and returns its secret, the
 * last line of stdout. scopes: "read,operate"; sites: "lyon" or undefined.
 */
export function createToken(dataDir, name, scopes, sites) {
  const args = ['token', 'create', '--data-dir', dataDir, '--name', name, '--scopes', scopes];
  if (sites) args.push('--sites', sites);
  return new Promise((res, rej) => {
    execFile(binaryPath(), args, { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) {
        rej(new Error(`twinline ${args.join(' ')}: ${err.message}\n${stderr}\n(this binary has no token support yet? issue 12's server side must be built in)`));
        return;
      }
      const secret = stdout.trim().split('\n').at(-1)?.trim();
      if (!secret) rej(new Error(`twinline token create printed no secret: ${stdout}`));
      else res(secret);
    });
  });
}

/** Headers authenticating a direct API call with a token (Bearer). */
export function bearer(token, extra = {}) {
  return { Authorization: `Bearer ${token}`, ...extra };
}

/**
 * Dropped frames from requestAnimationFrame timestamps (ms), as the fleet
 * e2e and the benchmark count them (docs/dashboard-benchmarks.md): the
 * median delta between frames is the display's frame interval; a delta
 * longer than 1.5 × that median, or than 20 ms (when the median is under
 * 20 ms: a display of 50 Hz or faster), is a late frame, and counts
 * as max(1, round(delta / median) − 1) dropped frames (the vsyncs it
 * missed). droppedPct = dropped / (frames drawn + dropped).
 */
export function frameStats(timestamps) {
  const deltas = [];
  for (let i = 1; i < timestamps.length; i++) deltas.push(timestamps[i] - timestamps[i - 1]);
  const sorted = [...deltas].sort((a, b) => a - b);
  const pct = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] : NaN);
  const median = pct(50);
  // the 20 ms rule is for displays of 50 Hz and faster (headless Chromium: 60 Hz)
  const limit = median < 20 ? Math.min(1.5 * median, 20) : 1.5 * median;
  let late = 0;
  let dropped = 0;
  for (const d of deltas) {
    if (d > limit) {
      late++;
      dropped += Math.max(1, Math.round(d / median) - 1);
    }
  }
  const r1 = (x) => Math.round(x * 10) / 10;
  return {
    frames: deltas.length,
    frameP50: r1(median),
    frameP95: r1(pct(95)),
    frameP99: r1(pct(99)),
    frameMax: r1(sorted.at(-1) ?? NaN),
    late,
    dropped,
    droppedPct: deltas.length ? r1((100 * dropped) / (deltas.length + dropped)) : NaN,
  };
}
