// Shared by control.test.mjs and screenshots-control.mjs: a machine of the
// twin control API (issue 15) registered with a desired schema, commands and
// an OEE spec, and a device played over HTTP — it reports, answers commands
// and sends states and part counters — so that the browser tests do not
// depend on the simulator's timing.
import { api } from './lib.mjs';

export const DESIRED_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    tempSetpoint: { type: 'number', minimum: 20, maximum: 250 },
    mode: { type: 'string', enum: ['auto', 'manual'] },
  },
};

export const COMMANDS = {
  stop: { description: 'Stop the machine' },
  start: { description: 'Start the machine' },
  reset: {
    description: 'Reset a counter',
    params: { type: 'object', required: ['counter'], additionalProperties: false, properties: { counter: { type: 'string', enum: ['parts'] } } },
  },
};

export const OEE = {
  stateMetric: 'state',
  runningStates: ['RUNNING'],
  plannedStopStates: ['PLANNED'],
  totalCount: 'parts_total',
  goodCount: 'parts_good',
  idealCycleSeconds: 1,
};

const enc = encodeURIComponent;

/** Headers of a JSON call, with an Authorization when token is given. */
function headers(token, extra = {}) {
  return { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}), ...extra };
}

/** Registers machine id with the control part of its entry (PUT /api/v1/machines/{id}). */
export async function registerControlled(url, id, { site = 'e2e', line = 'L1', token } = {}) {
  return api(url, `/api/v1/machines/${enc(id)}`, {
    method: 'PUT',
    headers: headers(token),
    body: JSON.stringify({ name: id, site, line, desiredSchema: DESIRED_SCHEMA, commands: COMMANDS, oee: OEE }),
  });
}

/** The device side of machine id over the HTTP API. */
export function device(url, id, token) {
  const base = `/api/v1/machines/${enc(id)}`;
  return {
    /** PATCH twin/reported (a JSON merge patch). */
    report: (patch) =>
      api(url, `${base}/twin/reported`, { method: 'PATCH', headers: headers(token, { 'Content-Type': 'application/merge-patch+json' }), body: JSON.stringify(patch) }),
    /** Events with states and counters; items: [{ ageMs, state, total, good }]. */
    send: (items) =>
      api(url, '/api/v1/events', {
        method: 'POST',
        headers: headers(token),
        body: JSON.stringify(
          items.map((x) => ({
            machineId: id,
            timestamp: Date.now() - x.ageMs,
            temp: 150,
            ...(x.total !== undefined ? { parts_total: x.total, parts_good: x.good ?? x.total } : {}),
            states: { state: x.state },
          })),
        ),
      }),
    /** GET …/commands?state=pending answers {machine, commands}. */
    pending: async () => (await api(url, `${base}/commands?state=pending`, { headers: headers(token) })).commands,
    respond: (cmdId, body) => api(url, `${base}/commands/${enc(cmdId)}/response`, { method: 'POST', headers: headers(token), body: JSON.stringify(body) }),
  };
}

export const twinOf = (url, id, token) => api(url, `/api/v1/machines/${enc(id)}/twin`, { headers: headers(token) });

export const setDesired = (url, id, patch, token) =>
  api(url, `/api/v1/machines/${enc(id)}/twin/desired`, {
    method: 'PATCH',
    headers: headers(token, { 'Content-Type': 'application/merge-patch+json' }),
    body: JSON.stringify(patch),
  });

/**
 * A controlled machine with some history: 20 min ago RUNNING, then DOWN for
 * 4 min, RUNNING again, counting parts; reported setpoint 175 and desired 180.
 */
export async function seedControlled(url, id, opts = {}) {
  await registerControlled(url, id, opts);
  const d = device(url, id, opts.token);
  await d.send([
    { ageMs: 20 * 60_000, state: 'RUNNING', total: 0 },
    { ageMs: 12 * 60_000, state: 'DOWN', total: 400, good: 392 },
    { ageMs: 8 * 60_000, state: 'RUNNING', total: 400, good: 392 },
    { ageMs: 3 * 60_000, state: 'IDLE', total: 600, good: 587 },
    { ageMs: 60_000, state: 'RUNNING', total: 600, good: 587 },
  ]);
  await d.report({ tempSetpoint: 175, mode: 'auto', fw: '1.2.0' });
  await setDesired(url, id, { tempSetpoint: 180, mode: 'auto' }, opts.token);
  return d;
}
