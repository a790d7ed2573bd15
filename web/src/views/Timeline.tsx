/**
 * The state timeline strip above the machine's charts: the machine's state
 * (the OEE spec's state metric, else "state") over the chart's range, one
 * coloured segment per interval, kept live from the stream's "state"
 * messages. Plain HTML: no Plotly for a strip.
 */
import { useEffect, useState } from 'react';
import { ApiError } from '../lib/api';
import {
  asControlMessage,
  extendIntervals,
  fmtDuration,
  growTo,
  stateClass,
  stateTotals,
  timelineLayout,
  type MachineControl,
  type StateSpan,
} from '../lib/control';
import { controlApi } from '../lib/controlApi';
import type { Range } from '../lib/route';
import { dashboard } from '../lib/store';

export function StateTimeline({ id, control, range }: { id: string; control: MachineControl | undefined; range: Range }) {
  const name = control?.oee?.stateMetric || 'state';
  const live = range.kind === 'live';
  const rangeKey = live ? `live:${range.spanMs}` : `${range.from}~${range.to}`;
  const [intervals, setIntervals] = useState<StateSpan[]>([]);
  const [missing, setMissing] = useState(false);
  const [n, setN] = useState(0);

  useEffect(() => {
    const ac = new AbortController();
    const now = Date.now();
    const from = range.kind === 'live' ? now - range.spanMs : range.from;
    const to = range.kind === 'live' ? now : range.to;
    controlApi
      .states(id, name, from, to, ac.signal)
      .then((a) => {
        setIntervals(a.intervals ?? []);
        setMissing(false);
      })
      .catch((e: Error) => {
        if (e instanceof ApiError && e.status === 404) setMissing(true);
      });
    const offMsg = live
      ? dashboard.onMessages((m) => {
          const c = asControlMessage(m);
          if (c?.type === 'state' && c.machine === id && c.data.name === name) {
            setIntervals((cur) => extendIntervals(cur, c.data, Date.now()));
          }
        })
      : () => {};
    const offGap = dashboard.onGap(() => setN((x) => x + 1));
    return () => {
      ac.abort();
      offMsg();
      offGap();
    };
    // rangeKey stands for range
  }, [id, name, rangeKey, n]);

  if (missing) return null;
  const now = Date.now();
  const from = range.kind === 'live' ? now - range.spanMs : range.from;
  const to = range.kind === 'live' ? now : range.to;
  const shown = live ? growTo(intervals, now) : intervals;
  const segs = timelineLayout(shown, from, to);
  // a machine without state series (no OEE spec, no latest state) gets no empty strip
  if (segs.length === 0 && !control?.oee && !control?.states?.[name]) return null;
  const current = live ? shown.at(-1)?.value : undefined;
  const totals = stateTotals(shown.map((iv) => ({ ...iv, from: Math.max(from, iv.from), to: Math.min(to, iv.to) })).filter((iv) => iv.to > iv.from));

  return (
    <div className="state-strip" data-testid="state-timeline" data-segments={segs.length} data-current={current ?? ''}>
      <div className="state-strip-head">
        <span className="muted small">{name}</span>
        {current && (
          <span className={`badge state-badge state-${stateClass(current)}`} data-testid="current-state">
            {current}
          </span>
        )}
        <span className="state-legend muted small">
          {totals.slice(0, 5).map((t) => (
            <span key={t.value}>
              <span className={`swatch state-${stateClass(t.value)}`} aria-hidden="true" /> {t.value} {fmtDuration(t.ms)}
            </span>
          ))}
        </span>
      </div>
      <div className="state-bar" role="img" aria-label={`${name} over the range: ${totals.map((t) => `${t.value} ${fmtDuration(t.ms)}`).join(', ') || 'no data'}`}>
        {segs.map((s) => (
          <span
            key={`${s.from}-${s.value}`}
            className={`state-seg state-${s.cls}`}
            style={{ left: `${s.left}%`, width: `${s.width}%` }}
            title={`${s.value}: ${new Date(s.from).toLocaleTimeString()} – ${new Date(s.to).toLocaleTimeString()} (${fmtDuration(s.to - s.from)})`}
            data-value={s.value}
          />
        ))}
        {segs.length === 0 && <span className="muted small state-empty">no {name} in this range</span>}
      </div>
    </div>
  );
}
