import { afterEach, describe, expect, it, vi } from 'vitest';
import { call } from './api';
import { FrameLoop } from './frame';
import { ApiError } from './http';
import { Dashboard } from './store';
import { can, canSignOut, describeIdentity, OPEN_SESSION, parseSession, SessionStore, writeHeaders, type Session } from './session';

interface Req {
  url: string;
  method: string;
  headers: Headers;
  body?: string;
  credentials?: RequestCredentials;
}

/** A fetch that answers from a list of responses (in order) and records each request. */
function fakeFetch(...answers: (Response | Error)[]) {
  const reqs: Req[] = [];
  const fn = async (input: RequestInfo | URL, init: RequestInit = {}) => {
    reqs.push({
      url: String(input),
      method: (init.method ?? 'GET').toUpperCase(),
      headers: new Headers(init.headers),
      body: init.body as string | undefined,
      credentials: init.credentials,
    });
    const a = answers.shift();
    if (!a) throw new Error(`unexpected request ${init.method ?? 'GET'} ${String(input)}`);
    if (a instanceof Error) throw a;
    return a;
  };
  return { fetch: fn as typeof fetch, reqs, answers };
}

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
const problem = (status: number, detail: string) =>
  new Response(JSON.stringify({ type: 'about:blank', title: 'x', status, detail }), {
    status,
    headers: { 'Content-Type': 'application/problem+json' },
  });

const ANA = {
  name: 'ana',
  kind: 'session',
  scopes: ['read', 'operate'],
  sites: ['lyon'],
  authRequired: true,
  csrf: 'c0ffee',
  expires: '2026-12-07T08:00:00Z',
};

/** A store whose timers are recorded, not run. */
function store(f: ReturnType<typeof fakeFetch>, now = Date.parse('2026-12-07T07:00:00Z')) {
  const timers: { fn: () => void; ms: number; cleared: boolean }[] = [];
  const s = new SessionStore({
    fetch: f.fetch,
    now: () => now,
    setTimer: (fn, ms) => {
      const t = { fn, ms, cleared: false };
      timers.push(t);
      return t;
    },
    clearTimer: (h) => {
      if (h) (h as { cleared: boolean }).cleared = true;
    },
  });
  return { s, timers };
}

describe('session and permissions', () => {
  it('parses the session document', () => {
    expect(parseSession(ANA)).toEqual({
      name: 'ana',
      kind: 'session',
      scopes: ['read', 'operate'],
      sites: ['lyon'],
      authRequired: true,
      csrf: 'c0ffee',
      expires: Date.parse('2026-12-07T08:00:00Z'),
    });
    // scopes as the Go type's text form; unknown scopes dropped; no sites means every site
    expect(parseSession({ name: 'x', kind: 'token', scopes: 'read, admin,bogus', authRequired: true, csrf: '' })).toMatchObject({
      scopes: ['read', 'admin'],
      sites: undefined,
    });
    expect(parseSession({ name: 'anonymous', kind: 'anonymous', scopes: ['ingest', 'read', 'operate', 'admin'], authRequired: false, csrf: '' }))
      .toMatchObject({ authRequired: false, sites: undefined, expires: undefined });
  });

  it('reads whether the server traces, and its trace viewer', () => {
    expect(parseSession({ ...ANA, tracing: { enabled: true, uiUrl: 'http://j/trace/{traceId}' } }).tracing).toEqual({
      enabled: true,
      uiUrl: 'http://j/trace/{traceId}',
    });
    expect(parseSession({ ...ANA, tracing: { enabled: false, uiUrl: '' } }).tracing).toEqual({ enabled: false, uiUrl: undefined });
    expect(parseSession({ ...ANA, tracing: { enabled: 'yes' } }).tracing).toEqual({ enabled: false, uiUrl: undefined });
    expect(parseSession(ANA).tracing).toBeUndefined(); // a server from before tracing
  });

  it('grants only the scopes the identity has', () => {
    const reader = parseSession({ ...ANA, scopes: ['read'] });
    expect(can(reader, 'read')).toBe(true);
    expect(can(reader, 'operate')).toBe(false);
    expect(can(reader, 'admin')).toBe(false);
    const op = parseSession(ANA);
    expect(can(op, 'operate')).toBe(true);
    expect(can(op, 'admin')).toBe(false);
    expect(can(undefined, 'read')).toBe(false);
    for (const sc of ['ingest', 'read', 'operate', 'admin'] as const) expect(can(OPEN_SESSION, sc)).toBe(true);
  });

  it('offers Sign out only for a real sign-in', () => {
    expect(canSignOut(parseSession(ANA))).toBe(true);
    expect(canSignOut(parseSession({ ...ANA, kind: 'token' }))).toBe(true);
    expect(canSignOut(OPEN_SESSION)).toBe(false);
    expect(canSignOut(parseSession({ ...ANA, kind: 'proxy' }))).toBe(false);
    expect(canSignOut(undefined)).toBe(false);
  });

  it('names the identity with its sites when restricted', () => {
    expect(describeIdentity(parseSession(ANA))).toBe('ana (site lyon)');
    expect(describeIdentity(parseSession({ ...ANA, sites: ['lyon', 'paris'] }))).toBe('ana (sites lyon, paris)');
    expect(describeIdentity(parseSession({ ...ANA, sites: undefined }))).toBe('ana');
  });

  it('puts the CSRF token on writes only', () => {
    const s = parseSession(ANA);
    for (const m of ['POST', 'put', 'PATCH', 'DELETE']) expect(writeHeaders(s, m)).toEqual({ 'X-CSRF-Token': 'c0ffee' });
    expect(writeHeaders(s, 'GET')).toEqual({});
    expect(writeHeaders(s)).toEqual({});
    expect(writeHeaders(OPEN_SESSION, 'POST')).toEqual({}); // open: no token to send
  });
});

describe('SessionStore', () => {
  it('is signed in when the server says who we are', async () => {
    const f = fakeFetch(json(200, ANA));
    const { s, timers } = store(f);
    const seen: string[] = [];
    s.subscribe((st) => seen.push(st.status));
    await s.load();
    expect(f.reqs[0]).toMatchObject({ url: '/api/v1/session', method: 'GET', credentials: 'same-origin' });
    expect(s.state).toMatchObject({ status: 'signed-in', session: { name: 'ana', csrf: 'c0ffee' } });
    expect(seen).toEqual(['signed-in']);
    // asks again one second after the sign-in expires (an hour from now): 401, the sign-in page
    expect(timers.map((t) => t.ms)).toEqual([3_601_000]);
    f.answers.push(problem(401, 'session expired'));
    timers[0].fn();
    await vi.waitFor(() => expect(s.state).toEqual({ status: 'signed-out', reason: 'Your session ended; sign in again.' }));
    expect(f.reqs.map((r) => `${r.method} ${r.url}`)).toEqual(['GET /api/v1/session', 'GET /api/v1/session']);
  });

  it('shows the sign-in page on 401, the open dashboard on 404 (a server without sign-in), an error otherwise', async () => {
    const a = store(fakeFetch(problem(401, 'sign in')));
    await a.s.load();
    expect(a.s.state).toEqual({ status: 'signed-out' });

    const b = store(fakeFetch(problem(404, 'no such route')));
    await b.s.load();
    expect(b.s.state).toEqual({ status: 'signed-in', session: OPEN_SESSION });

    const c = store(fakeFetch(problem(503, 'not ready')));
    await c.s.load();
    expect(c.s.state).toEqual({ status: 'error', message: '503 not ready' });

    const d = store(fakeFetch(new TypeError('Failed to fetch')));
    await d.s.load();
    expect(d.s.state).toMatchObject({ status: 'error', message: expect.stringContaining('Failed to fetch') });
  });

  it('signs in with a token, and reports the server detail for a bad one', async () => {
    const f = fakeFetch(problem(401, 'invalid token'), json(200, ANA));
    const { s } = store(f);
    const err = await s.signIn('tl_bad').catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 401, detail: 'invalid token' });
    expect(f.reqs[0].method).toBe('POST');
    expect(f.reqs[0].headers.get('Content-Type')).toBe('application/json');
    expect(JSON.parse(f.reqs[0].body!)).toEqual({ token: 'tl_bad' });
    expect(s.session).toBeUndefined();

    await s.signIn('  tl_good\n');
    expect(JSON.parse(f.reqs[1].body!)).toEqual({ token: 'tl_good' });
    expect(s.session?.name).toBe('ana');
  });

  it('signs out with the CSRF header', async () => {
    const f = fakeFetch(json(200, ANA), new Response(null, { status: 204 }));
    const { s, timers } = store(f);
    await s.load();
    await s.signOut();
    expect(f.reqs[1].method).toBe('DELETE');
    expect(f.reqs[1].headers.get('X-CSRF-Token')).toBe('c0ffee');
    expect(s.state).toEqual({ status: 'signed-out' });
    expect(timers.map((t) => t.cleared)).toEqual([true]); // the expiry check was cancelled
  });

  it('ends the session once on a 401 and says why', async () => {
    const { s } = store(fakeFetch(json(200, ANA)));
    await s.load();
    const seen: unknown[] = [];
    s.subscribe((st) => seen.push(st));
    s.ended('token revoked');
    s.ended('token revoked');
    expect(seen).toEqual([{ status: 'signed-out', reason: 'Your session ended; sign in again.' }]);
  });

  it('asks for no stream ticket when the server is open', async () => {
    const f = fakeFetch(problem(404, 'no such route'));
    const { s } = store(f);
    await s.load();
    expect(await s.streamTicket()).toBeUndefined();
    expect(f.reqs).toHaveLength(1);
  });

  it('gets a stream ticket with the CSRF header and an empty JSON body', async () => {
    const f = fakeFetch(json(200, ANA), json(200, { ticket: 't1', expires: '2026-12-07T07:00:30Z' }), problem(401, 'session expired'));
    const { s } = store(f);
    await s.load();
    expect(await s.streamTicket()).toBe('t1');
    expect(f.reqs[1]).toMatchObject({ url: '/api/v1/stream/tickets', method: 'POST', body: '{}', credentials: 'same-origin' });
    expect(f.reqs[1].headers.get('X-CSRF-Token')).toBe('c0ffee');
    expect(f.reqs[1].headers.get('Content-Type')).toBe('application/json');
    // a 401 for the ticket ends the session
    await expect(s.streamTicket()).rejects.toMatchObject({ status: 401 });
    expect(s.state.status).toBe('signed-out');
  });
});

describe('API calls', () => {
  afterEach(() => vi.unstubAllGlobals());

  async function signedIn(sess: Partial<Session> = {}) {
    const { s } = store(fakeFetch(json(200, { ...ANA, ...sess })));
    await s.load();
    return s;
  }

  it('send the CSRF header on writes, not on reads, with same-origin credentials', async () => {
    const s = await signedIn();
    const f = fakeFetch(json(200, { ok: 1 }), json(200, { ok: 2 }));
    vi.stubGlobal('fetch', f.fetch);
    await call('/api/v1/machines', {}, s);
    await call('/api/v1/alarms/a1/ack', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"note":"x"}' }, s);
    expect(f.reqs[0].headers.has('X-CSRF-Token')).toBe(false);
    expect(f.reqs[0].credentials).toBe('same-origin');
    expect(f.reqs[1].headers.get('X-CSRF-Token')).toBe('c0ffee');
    expect(f.reqs[1].headers.get('Content-Type')).toBe('application/json');
  });

  it('end the session on 401 and show the detail of a 403', async () => {
    const s = await signedIn();
    vi.stubGlobal('fetch', fakeFetch(problem(403, 'needs the operate scope'), problem(401, 'session expired')).fetch);
    await expect(call('/api/v1/alarms/a1/ack', { method: 'POST' }, s)).rejects.toMatchObject({
      status: 403,
      detail: 'needs the operate scope',
    });
    expect(s.state.status).toBe('signed-in');
    await expect(call('/api/v1/machines', {}, s)).rejects.toMatchObject({ status: 401 });
    expect(s.state).toMatchObject({ status: 'signed-out', reason: expect.stringContaining('sign in again') });
  });

  it('accept 204 No Content', async () => {
    const s = await signedIn();
    vi.stubGlobal('fetch', fakeFetch(new Response(null, { status: 204 })).fetch);
    expect(await call('/api/v1/machines/m1', { method: 'DELETE' }, s)).toBeUndefined();
  });
});

describe('Dashboard on sign-out', () => {
  it('closes the stream and forgets the fleet the last identity saw', async () => {
    const { s } = store(fakeFetch(json(200, ANA)));
    await s.load();
    const d = new Dashboard(new FrameLoop(() => 0, () => 0), s);
    const stop = vi.spyOn(d.stream, 'stop');
    d.fleet.load([{ id: 'lyon-1', site: 'lyon', status: 'online', alarm: false }]);
    s.ended('session expired');
    expect(d.fleet.entries.size).toBe(0);
    expect(stop).toHaveBeenCalledTimes(1);
  });
});
