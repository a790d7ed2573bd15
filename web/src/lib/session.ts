/**
 * Who the dashboard acts as (docs/security.md): GET /api/v1/session says,
 * POST signs in with a token (the server sets an HttpOnly cookie), DELETE
 * signs out. The session's CSRF token goes on every state-changing request
 * (X-CSRF-Token), and a live stream connection needs a single-use ticket
 * when sign-in is required. A 401 from any call ends the session: the
 * dashboard shows the sign-in page.
 */
import { ApiError, errorFrom } from './http';

export type Scope = 'ingest' | 'read' | 'operate' | 'admin';

export const ALL_SCOPES: readonly Scope[] = ['ingest', 'read', 'operate', 'admin'];

export interface Session {
  name: string;
  /** token, session, proxy or anonymous. */
  kind: string;
  scopes: Scope[];
  /** The only sites the identity sees; undefined: every site. */
  sites?: string[];
  /** False when the server is open (no tokens): the identity is anonymous. */
  authRequired: boolean;
  /** Sent as X-CSRF-Token on POST, PUT, PATCH and DELETE; "" when open. */
  csrf: string;
  /** When the sign-in ends (ms since the epoch), if it does. */
  expires?: number;
  /** Whether the server traces (the dashboard then traces its renders), and its trace viewer's URL. */
  tracing?: { enabled: boolean; uiUrl?: string };
}

/** A server from before sign-in (no /api/v1/session) is open: anyone may do anything. */
export const OPEN_SESSION: Session = {
  name: 'anonymous',
  kind: 'anonymous',
  scopes: [...ALL_SCOPES],
  authRequired: false,
  csrf: '',
};

/** Parses GET/POST /api/v1/session; scopes may also come as "read,operate". */
export function parseSession(raw: unknown): Session {
  const o = (raw ?? {}) as Record<string, unknown>;
  const list = (v: unknown): string[] =>
    Array.isArray(v) ? v.map(String) : typeof v === 'string' ? v.split(',').map((s) => s.trim()) : [];
  const scopes = list(o.scopes).filter((s): s is Scope => (ALL_SCOPES as readonly string[]).includes(s));
  const sites = list(o.sites).filter(Boolean);
  const expires = typeof o.expires === 'string' ? Date.parse(o.expires) : NaN;
  const t = o.tracing as Record<string, unknown> | undefined;
  return {
    name: typeof o.name === 'string' ? o.name : '',
    kind: typeof o.kind === 'string' ? o.kind : 'token',
    scopes,
    sites: sites.length ? sites : undefined,
    authRequired: o.authRequired !== false,
    csrf: typeof o.csrf === 'string' ? o.csrf : '',
    expires: Number.isFinite(expires) ? expires : undefined,
    tracing:
      t && typeof t === 'object'
        ? { enabled: t.enabled === true, uiUrl: typeof t.uiUrl === 'string' && t.uiUrl ? t.uiUrl : undefined }
        : undefined,
  };
}

/** Whether the identity has scope (nobody signed in has none). */
export function can(s: Session | undefined, scope: Scope): boolean {
  return !!s && s.scopes.includes(scope);
}

/**
 * Whether signing out means anything: not for the anonymous identity of an
 * open server, nor for a user named by an authenticating proxy (the proxy
 * would sign them in again on the next request).
 */
export function canSignOut(s: Session | undefined): boolean {
  return !!s && s.authRequired && s.kind !== 'anonymous' && s.kind !== 'proxy';
}

/** "ana" or "ana (sites lyon, paris)". */
export function describeIdentity(s: Session): string {
  return s.sites?.length ? `${s.name} (site${s.sites.length > 1 ? 's' : ''} ${s.sites.join(', ')})` : s.name;
}

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/** The headers a request with method needs beyond its own: the CSRF token on writes. */
export function writeHeaders(s: Session | undefined, method = 'GET'): Record<string, string> {
  return WRITE_METHODS.has(method.toUpperCase()) && s?.csrf ? { 'X-CSRF-Token': s.csrf } : {};
}

export type SessionState =
  | { status: 'loading' }
  | { status: 'signed-in'; session: Session }
  /** reason: why a session that was in use ended (shown on the sign-in page). */
  | { status: 'signed-out'; reason?: string }
  /** The server did not answer as expected (down, or a 5xx): retry. */
  | { status: 'error'; message: string };

export interface SessionOptions {
  fetch?: typeof fetch;
  now?: () => number;
  setTimer?: (fn: () => void, ms: number) => unknown;
  clearTimer?: (h: unknown) => void;
}

const PATH = '/api/v1/session';
const ENDED = 'Your session ended; sign in again.';
/** setTimeout's longest delay. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** The page's sign-in state and the calls that change it. */
export class SessionStore {
  state: SessionState = { status: 'loading' };
  private readonly listeners = new Set<(s: SessionState) => void>();
  private readonly fetch: typeof fetch;
  private readonly now: () => number;
  private readonly setTimer: (fn: () => void, ms: number) => unknown;
  private readonly clearTimer: (h: unknown) => void;
  private expiry: unknown;

  constructor(o: SessionOptions = {}) {
    this.fetch = o.fetch ?? ((input, init) => fetch(input, init));
    this.now = o.now ?? (() => Date.now());
    this.setTimer = o.setTimer ?? ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = o.clearTimer ?? ((h) => clearTimeout(h as ReturnType<typeof setTimeout>));
  }

  /** The signed-in session, if any. */
  get session(): Session | undefined {
    return this.state.status === 'signed-in' ? this.state.session : undefined;
  }

  subscribe(l: (s: SessionState) => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Asks the server who we are: signed in, open, or a sign-in is needed. */
  async load(): Promise<void> {
    let res: Response;
    try {
      res = await this.fetch(PATH, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    } catch (e) {
      this.set({ status: 'error', message: `cannot reach the server: ${(e as Error).message}` });
      return;
    }
    if (res.ok) {
      this.signedIn(parseSession(await res.json()));
    } else if (res.status === 401) {
      this.set({ status: 'signed-out', reason: this.session?.authRequired ? ENDED : undefined });
    } else if (res.status === 404) {
      this.signedIn(OPEN_SESSION); // a server without sign-in
    } else {
      this.set({ status: 'error', message: (await errorFrom(res)).message });
    }
  }

  /** Signs in with an API token; throws an ApiError with the server's detail when refused. */
  async signIn(token: string): Promise<Session> {
    const res = await this.fetch(PATH, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ token: token.trim() }),
    });
    if (!res.ok) throw await errorFrom(res);
    const s = parseSession(await res.json());
    this.signedIn(s);
    return s;
  }

  /** Signs out (the server clears the cookie); a session already gone counts as signed out. */
  async signOut(): Promise<void> {
    const res = await this.fetch(PATH, {
      method: 'DELETE',
      credentials: 'same-origin',
      headers: { ...writeHeaders(this.session, 'DELETE') },
    });
    if (!res.ok && res.status !== 401) throw await errorFrom(res);
    this.set({ status: 'signed-out' });
  }

  /** Called on a 401 from any API call: the session ended (expired, revoked, signed out elsewhere). */
  ended(detail?: string): void {
    if (this.state.status === 'signed-out') return;
    const reason = this.session?.authRequired
      ? ENDED
      : `This server now requires signing in${detail ? ` (${detail})` : ''}.`;
    this.set({ status: 'signed-out', reason });
  }

  /** Headers a request with method needs (CSRF on writes). */
  headers(method?: string): Record<string, string> {
    return writeHeaders(this.session, method);
  }

  /**
   * A single-use ticket for one live stream connection, or undefined when
   * the server does not require sign-in. A 401 ends the session.
   */
  async streamTicket(): Promise<string | undefined> {
    const s = this.session;
    if (!s) throw new ApiError(401, '401 not signed in', 'not signed in');
    if (!s.authRequired) return undefined;
    const res = await this.fetch('/api/v1/stream/tickets', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json', ...writeHeaders(s, 'POST') },
      body: '{}',
    });
    if (!res.ok) {
      const err = await errorFrom(res);
      if (res.status === 401) this.ended(err.detail);
      throw err;
    }
    const t = (await res.json()) as { ticket?: unknown };
    if (typeof t.ticket !== 'string' || !t.ticket) throw new Error('stream ticket: no ticket in the answer');
    return t.ticket;
  }

  private signedIn(s: Session): void {
    this.set({ status: 'signed-in', session: s });
    if (s.expires !== undefined) {
      // when the sign-in lapses, ask again: the server says 401 (or a renewed session)
      const ms = Math.min(MAX_TIMER_MS, Math.max(0, s.expires - this.now()) + 1000);
      this.expiry = this.setTimer(() => void this.load(), ms);
    }
  }

  private set(s: SessionState): void {
    this.clearTimer(this.expiry);
    this.expiry = undefined;
    this.state = s;
    for (const l of this.listeners) l(s);
  }
}

/** The page's session. */
export const session = new SessionStore();
