import { memo, useEffect, useLayoutEffect, useMemo, useRef, useState } from 'react';
import { flushSync } from 'react-dom';
import { currentState, stateClass } from '../lib/control';
import { formatRoute } from '../lib/route';
import { FLEET_FILTER, dashboard, matchesStatus, type FleetEntry } from '../lib/store';
import { layoutGrid, visibleRows } from '../lib/grid';
import { AlarmBadge, StatusBadge, fmtAgo, fmtNum, useTick } from './common';
import { DownloadLink } from './Download';
import { fleetCsvUrl } from '../lib/download';

const TILE_W = 232;
const ROW_H = 132;
const HEADER_H = 36;

interface Props {
  q: string;
  status: string;
  group: string;
  navigate(hash: string, replace?: boolean): void;
}

export function Fleet({ q, status, group, navigate }: Props) {
  const [, setVersion] = useState(0);
  useEffect(() => {
    dashboard.subscribe(FLEET_FILTER);
    return dashboard.watchFleet(() => flushSync(() => setVersion((v) => v + 1)));
  }, []);

  const fleet = dashboard.fleet;
  const counts = fleet.counts();
  const needle = q.trim().toLowerCase();
  const list = fleet.list();
  const unfiltered = status === 'all' && !needle;
  // Unfiltered, the list (sorted once per change of membership) is the
  // grid's content as it is: the layout below is reused across the
  // renders the live values cause. Filtered, it is redone when an entry
  // changed (statuses and names move).
  const filtered = useMemo(
    () =>
      unfiltered
        ? list
        : list.filter((e) => {
            if (!matchesStatus(e, status)) return false;
            if (!needle) return true;
            const m = e.m;
            return [m.id, m.name, m.site, m.line].some((s) => s?.toLowerCase().includes(needle));
          }),
    [list, status, needle, unfiltered ? 0 : fleet.version],
  );
  const groups = useMemo(() => groupEntries(filtered, group), [filtered, group]);

  const setParam = (patch: Partial<{ q: string; status: string; group: string }>) =>
    navigate(formatRoute({ view: 'fleet', q, status, group, ...patch }), true);

  return (
    <div className="fleet">
      <div className="toolbar" role="toolbar" aria-label="Fleet filters">
        <div className="counts" role="group" aria-label="Filter by status">
          {(
            [
              ['all', 'All', counts.total],
              ['online', 'Online', counts.online],
              ['offline', 'Offline', counts.offline],
              ['alarm', 'Alarm', counts.alarm],
            ] as const
          ).map(([key, label, n]) => (
            <button
              key={key}
              className={`count count-${key}`}
              aria-pressed={status === key}
              onClick={() => setParam({ status: key })}
              data-testid={`count-${key}`}
            >
              {key !== 'all' && <StatusIcon status={key} />} {label} <strong>{n}</strong>
            </button>
          ))}
        </div>
        <label className="search">
          <span className="sr-only">Search machines</span>
          <input
            type="search"
            placeholder="Search id, name, site, line…"
            value={q}
            onChange={(e) => setParam({ q: e.target.value })}
          />
        </label>
        <label>
          Group by{' '}
          <select value={group} onChange={(e) => setParam({ group: e.target.value })}>
            <option value="none">none</option>
            <option value="site">site</option>
            <option value="line">site / line</option>
          </select>
        </label>
        <span className="muted" aria-live="polite">
          {filtered.length} shown
        </span>
        <DownloadLink href={fleetCsvUrl} title="Every machine you may see: a row each, a column per metric's latest value" />
      </div>
      <VirtualGrid groups={groups} showHeaders={group !== 'none'} />
    </div>
  );
}

/** A machine's liveness as shown: offline, or else online. */
function normStatus(s: string): 'online' | 'offline' {
  return s === 'offline' ? 'offline' : 'online';
}


const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

function groupEntries(list: FleetEntry[], group: string) {
  if (group === 'none') return [{ key: 'all', label: 'All machines', items: list }];
  const map = new Map<string, FleetEntry[]>();
  for (const e of list) {
    const site = e.m.site || '(no site)';
    const key = group === 'site' ? site : `${site} / ${e.m.line || '(no line)'}`;
    let g = map.get(key);
    if (!g) map.set(key, (g = []));
    g.push(e);
  }
  return [...map.entries()].sort(([a], [b]) => collator.compare(a, b)).map(([key, items]) => ({ key, label: key, items }));
}

function VirtualGrid({ groups, showHeaders }: { groups: { key: string; label: string; items: FleetEntry[] }[]; showHeaders: boolean }) {
  const ref = useRef<HTMLDivElement>(null);
  const [size, setSize] = useState({ w: 1200, h: 800 });
  const [scrollTop, setScrollTop] = useState(0);
  const minute = useTick(5000);

  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setSize({ w: el.clientWidth, h: el.clientHeight }));
    ro.observe(el);
    setSize({ w: el.clientWidth, h: el.clientHeight });
    return () => ro.disconnect();
  }, []);

  const columns = Math.max(1, Math.floor((size.w - 16) / TILE_W));
  const layout = useMemo(
    () => layoutGrid(groups, columns, ROW_H, HEADER_H, showHeaders),
    // groups is rebuilt on every render; its content is what matters
    [groups, columns, showHeaders],
  );
  // Two rows of overscan on each side, and the scroll position quantised
  // to whole rows: the grid re-renders once per row scrolled (mounting
  // one row, dropping another), not on every scroll event.
  const rows = visibleRows(layout, scrollTop, size.h, ROW_H * 2);

  return (
    <div
      className="grid-scroll"
      ref={ref}
      onScroll={(e) => setScrollTop(Math.floor(e.currentTarget.scrollTop / ROW_H) * ROW_H)}
      data-testid="fleet-grid"
    >
      <div className="grid-inner" style={{ height: layout.height }} role="list" aria-label="Machines">
        {rows.map((r) =>
          r.kind === 'header' ? (
            <h2 key={r.key} className="group-header" style={{ transform: `translateY(${r.top}px)`, height: r.height }}>
              {r.label} <span className="muted">({r.count})</span>
            </h2>
          ) : (
            <div key={r.key} className="tile-row" style={{ transform: `translateY(${r.top}px)`, height: r.height }}>
              {r.items.map((e) => (
                <Tile key={e.m.id} e={e} v={e.v} minute={minute} />
              ))}
            </div>
          ),
        )}
      </div>
    </div>
  );
}

/** A machine's tile; it re-renders only when its entry changed (v) or for the "seen ago" text. */
const Tile = memo(function Tile({ e }: { e: FleetEntry; v: number; minute: number }) {
  const m = e.m;
  const st = normStatus(m.status);
  const p = e.primary ? m.metrics?.[e.primary] : undefined;
  const state = currentState(m);
  return (
    <a
      className={`tile status-${st}${m.alarm ? ' in-alarm' : ''}${state !== undefined ? ` state-${stateClass(state)}` : ''}`}
      href={formatRoute({ view: 'machine', id: m.id, range: { kind: 'live', spanMs: 120_000, label: 'live' } })}
      role="listitem"
      data-machine={m.id}
      data-status={st}
      data-alarm={m.alarm ? 'true' : 'false'}
      data-state={state ?? ''}
      aria-label={`${m.name || m.id}: ${st}${state !== undefined ? `, ${state}` : ''}${m.alarm ? ', in alarm' : ''}`}
    >
      <div className="tile-head">
        <span className="tile-id">{m.name || m.id}</span>
        <StatusBadge status={st} />
        {m.alarm && <AlarmBadge />}
      </div>
      <div className="tile-sub muted">
        <span>{[m.site, m.line].filter(Boolean).join(' · ') || m.id}</span>
        {state !== undefined && (
          <span className={`state-chip state-${stateClass(state)}`} data-testid="tile-state">
            {state}
          </span>
        )}
      </div>
      <div className="tile-value">
        <span className="metric-name">{e.primary ?? '—'}</span>{' '}
        <span className="value" data-testid="tile-value">
          {p ? fmtNum(p.value) : '—'}
        </span>
      </div>
      <Sparkline e={e} />
      <div className="tile-foot muted">
        <span title="events per second over the last minute">{m.rate1m !== undefined ? `${fmtNum(m.rate1m)}/s` : ''}</span>
        <span>{m.lastSeen ? fmtAgo(m.lastSeen) : 'never seen'}</span>
      </div>
    </a>
  );
});

function Sparkline({ e }: { e: FleetEntry }) {
  const r = e.spark;
  const n = r.length;
  if (n < 2) return <svg className="spark" aria-hidden="true" />;
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = r.valueAt(i);
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const t0 = r.timeAt(0);
  const t1 = r.timeAt(n - 1);
  const W = 200;
  const H = 28;
  let d = '';
  for (let i = 0; i < n; i++) {
    const x = t1 > t0 ? ((r.timeAt(i) - t0) / (t1 - t0)) * W : (i / (n - 1)) * W;
    const y = hi > lo ? H - 2 - ((r.valueAt(i) - lo) / (hi - lo)) * (H - 4) : H / 2;
    d += `${i ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`;
  }
  return (
    <svg className="spark" viewBox={`0 0 ${W} ${H}`} preserveAspectRatio="none" aria-hidden="true">
      <path d={d} />
    </svg>
  );
}

/** The icon of a status filter: a liveness, or alarm. */
export function StatusIcon({ status }: { status: string }) {
  const s = status === 'alarm' ? 'alarm' : normStatus(status);
  const icon = s === 'alarm' ? '▲' : s === 'offline' ? '○' : '●';
  return (
    <span className={`status-icon status-${s}`} aria-hidden="true">
      {icon}
    </span>
  );
}
