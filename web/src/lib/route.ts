/**
 * Routes live in the URL hash so links carry the view, the machine and the
 * time range: #/ (fleet), #/alarms, #/m/<id>?range=live|5m|1h|24h|<from>~<to>&metrics=a,b,
 * #/oee?period=shift|day&site=lyon
 */

export type Range =
  | { kind: 'live'; spanMs: number; label: string }
  | { kind: 'custom'; from: number; to: number };

export type Route =
  | { view: 'fleet'; q: string; status: string; group: string }
  | { view: 'alarms' }
  | { view: 'oee'; period: 'shift' | 'day'; site: string }
  | { view: 'machine'; id: string; range: Range; metrics?: string[] };

export const LIVE_SPANS: Record<string, number> = {
  live: 2 * 60_000,
  '5m': 5 * 60_000,
  '1h': 60 * 60_000,
  '24h': 24 * 60 * 60_000,
};

export function parseRange(s: string | null): Range {
  if (s && s in LIVE_SPANS) return { kind: 'live', spanMs: LIVE_SPANS[s], label: s };
  if (s) {
    const m = /^(\d+)~(\d+)$/.exec(s);
    if (m && +m[1] < +m[2]) return { kind: 'custom', from: +m[1], to: +m[2] };
  }
  return { kind: 'live', spanMs: LIVE_SPANS.live, label: 'live' };
}

export function formatRange(r: Range): string {
  return r.kind === 'live' ? r.label : `${Math.floor(r.from)}~${Math.ceil(r.to)}`;
}

export function parseRoute(hash: string): Route {
  const h = hash.replace(/^#/, '');
  const [path, query = ''] = h.split('?', 2);
  const q = new URLSearchParams(query);
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === 'alarms') return { view: 'alarms' };
  if (parts[0] === 'oee') return { view: 'oee', period: q.get('period') === 'day' ? 'day' : 'shift', site: q.get('site') ?? '' };
  if (parts[0] === 'm' && parts[1]) {
    const metrics = q.get('metrics');
    return {
      view: 'machine',
      id: decodeURIComponent(parts[1]),
      range: parseRange(q.get('range')),
      metrics: metrics ? metrics.split(',').filter(Boolean) : undefined,
    };
  }
  return { view: 'fleet', q: q.get('q') ?? '', status: q.get('status') ?? 'all', group: q.get('group') ?? 'none' };
}

export function formatRoute(r: Route): string {
  switch (r.view) {
    case 'alarms':
      return '#/alarms';
    case 'oee': {
      const q = new URLSearchParams();
      if (r.period !== 'shift') q.set('period', r.period);
      if (r.site) q.set('site', r.site);
      const qs = q.toString();
      return `#/oee${qs ? `?${qs}` : ''}`;
    }
    case 'machine': {
      const q = new URLSearchParams();
      if (!(r.range.kind === 'live' && r.range.label === 'live')) q.set('range', formatRange(r.range));
      if (r.metrics?.length) q.set('metrics', r.metrics.join(','));
      const qs = q.toString().replace(/%2C/g, ',').replace(/%7E/gi, '~');
      return `#/m/${encodeURIComponent(r.id)}${qs ? `?${qs}` : ''}`;
    }
    default: {
      const q = new URLSearchParams();
      if (r.q) q.set('q', r.q);
      if (r.status !== 'all') q.set('status', r.status);
      if (r.group !== 'none') q.set('group', r.group);
      const qs = q.toString();
      return `#/${qs ? `?${qs}` : ''}`;
    }
  }
}
