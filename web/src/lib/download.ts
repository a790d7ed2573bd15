/**
 * The URLs of the dashboard's downloads (docs/export.md): CSV answers of the
 * API, fetched by the browser as plain links (same origin: the session
 * cookie goes along), saved under the server's Content-Disposition name.
 */

const enc = encodeURIComponent;

/** A range of the chart, in epoch ms. */
export interface Span {
  from: number;
  to: number;
}

/**
 * The bulk export of a machine's metrics over a range: one file with a row
 * per sample (time, machine, metric, value, site, line), streamed by the
 * server, without the raw-point cap of the series route.
 */
export function exportUrl(machine: string, metrics: string[], span: Span, format: 'csv' | 'parquet' = 'csv'): string {
  const p = new URLSearchParams({ machine });
  for (const m of metrics) p.append('metric', m);
  p.set('from', String(Math.floor(span.from)));
  p.set('to', String(Math.ceil(span.to)));
  p.set('format', format);
  return `/api/v1/export?${p}`;
}

/** One series as CSV (time, machine, metric, value), raw samples of the range. */
export function seriesCsvUrl(machine: string, metric: string, span: Span): string {
  const p = new URLSearchParams({ metric, from: String(Math.floor(span.from)), to: String(Math.ceil(span.to)), format: 'csv' });
  return `/api/v1/machines/${enc(machine)}/series?${p}`;
}

/** The fleet table as CSV: a row per machine, a column per metric's latest value. */
export function fleetCsvUrl(): string {
  return '/api/v1/machines?format=csv';
}

/** The alarms as CSV: the active ones, or the whole journal. */
export function alarmsCsvUrl(state: 'active' | 'all'): string {
  return `/api/v1/alarms?${new URLSearchParams({ state, format: 'csv' })}`;
}
