/** Calls to the twin control API (docs/control.md): twins, commands, states, OEE. */
import { call } from './api';
import type { MachineControl } from './control';
import { ifMatch } from './control';
import type { Command, Machine, OEEReport, States, Twin } from './wire';

const enc = encodeURIComponent;

export const controlApi = {
  /** The registry entry's control part (desiredSchema, commands, oee) and latest states. */
  machine: (id: string) => call<Machine & MachineControl>(`/api/v1/machines/${enc(id)}`),

  twin: (id: string) => call<Twin>(`/api/v1/machines/${enc(id)}/twin`),

  /**
   * Merge-patches the desired document; with version, only if nobody
   * changed it since (If-Match; a 412 ApiError otherwise).
   */
  patchDesired: (id: string, patch: Record<string, unknown>, version?: number) =>
    call<Twin>(`/api/v1/machines/${enc(id)}/twin/desired`, {
      method: 'PATCH',
      headers: {
        'Content-Type': 'application/merge-patch+json',
        ...(version !== undefined ? { 'If-Match': ifMatch(version) } : {}),
      },
      body: JSON.stringify(patch),
    }),

  commands: (id: string, limit = 20) => call<{ machine: string; commands: Command[] }>(`/api/v1/machines/${enc(id)}/commands?limit=${limit}`),

  /** Sends a command; the key makes a retried send answer the same command. */
  sendCommand: (id: string, body: { name: string; params?: Record<string, unknown>; timeout?: string }, idempotencyKey: string) =>
    call<Command>(`/api/v1/machines/${enc(id)}/commands`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Idempotency-Key': idempotencyKey },
      body: JSON.stringify(body),
    }),

  states: (id: string, name: string, from: number, to: number, signal?: AbortSignal) => {
    const p = new URLSearchParams({ name, from: String(Math.floor(from)), to: String(Math.ceil(to)) });
    return call<States>(`/api/v1/machines/${enc(id)}/states?${p}`, { signal });
  },

  oee: (q: { from: number; to: number; step?: string; site?: string; line?: string }, signal?: AbortSignal) => {
    const p = new URLSearchParams({ from: String(Math.floor(q.from)), to: String(Math.ceil(q.to)) });
    if (q.step) p.set('step', q.step);
    if (q.site) p.set('site', q.site);
    if (q.line) p.set('line', q.line);
    return call<OEEReport>(`/api/v1/oee?${p}`, { signal });
  },
};
