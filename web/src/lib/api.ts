/** Typed calls to the twinline HTTP API (docs/api.md). */
import { errorFrom } from './http';
import { session, type SessionStore } from './session';

/** The API's answers, generated from the OpenAPI document (./wire). */
export type { Alarm, AlarmDelivery, DeliveryState, ListedAlarm, Latest, Note, Series, Threshold, Value as MetricValue } from './wire';
import type { Alarm, ListedAlarm, Latest, Machine as ApiMachine, Note, Series } from './wire';

/**
 * A machine as the dashboard holds it: the API's Machine, of which one
 * first seen on the stream has only its id, status and latest values.
 */
export type Machine = Pick<ApiMachine, 'id' | 'status'> & Partial<ApiMachine>;

export { ApiError } from './http';

/**
 * One API call: same-origin credentials (the session cookie), the CSRF
 * header on writes, and an ApiError with the problem's detail for a non-2xx
 * answer. A 401 ends the session (the sign-in page shows); a 403 is only
 * the caller's to show.
 */
export async function call<T>(path: string, init: RequestInit = {}, s: SessionStore = session): Promise<T> {
  const headers = new Headers(init.headers);
  for (const [k, v] of Object.entries(s.headers(init.method))) headers.set(k, v);
  const res = await fetch(path, { ...init, headers, credentials: 'same-origin' });
  if (!res.ok) {
    const err = await errorFrom(res);
    if (res.status === 401) s.ended(err.detail);
    throw err;
  }
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

const enc = encodeURIComponent;

export const api = {
  machines: () => call<{ count: number; machines: ApiMachine[] }>('/api/v1/machines'),
  machine: (id: string) => call<ApiMachine>(`/api/v1/machines/${enc(id)}`),
  latest: (id: string) => call<Latest>(`/api/v1/machines/${enc(id)}/latest`),
  series: (
    id: string,
    q: { metric: string; from: number; to: number; points?: number; step?: string; agg?: string },
    signal?: AbortSignal,
  ) => {
    const p = new URLSearchParams({ metric: q.metric, from: String(Math.floor(q.from)), to: String(Math.ceil(q.to)) });
    if (q.points) p.set('points', String(q.points));
    if (q.step) p.set('step', q.step);
    if (q.agg) p.set('agg', q.agg);
    return call<Series>(`/api/v1/machines/${enc(id)}/series?${p}`, { signal });
  },
  alarms: (state: 'active' | 'all', machine?: string) => {
    const p = new URLSearchParams({ state });
    if (machine) p.set('machine', machine);
    return call<{ count: number; alarms: ListedAlarm[] }>(`/api/v1/alarms?${p}`);
  },
  /** Acknowledges an alarm; the server records who (the signed-in identity). */
  ack: (id: string, note: string) =>
    call<Alarm>(`/api/v1/alarms/${enc(id)}/ack`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ note }),
    }),
  notes: (id: string) => call<{ machine: string; notes: Note[] }>(`/api/v1/machines/${enc(id)}/notes`),
  /** Posts a note; author is what an open server records (a signed-in one knows who). */
  postNote: (id: string, text: string, author?: string) =>
    call<Note>(`/api/v1/machines/${enc(id)}/notes`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ text, author }),
    }),
};
