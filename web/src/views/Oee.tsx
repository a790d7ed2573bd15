/**
 * The OEE view (#/oee): availability, performance and quality per site,
 * line and machine over the last shift (8 h) or day, with the top downtime
 * reasons (GET /api/v1/oee). Bars are plain HTML, no Plotly.
 */
import { useEffect, useState } from 'react';
import { ApiError } from '../lib/api';
import {
  barWidth,
  fmtDuration,
  fmtPct,
  OEE_PERIODS,
  oeeLines,
  stateClass,
  topDowntime,
  type OEEAnswer,
  type OEEFigures,
  type OEEPeriod,
} from '../lib/control';
import { controlApi } from '../lib/controlApi';
import { formatRoute } from '../lib/route';

const REFRESH_MS = 60_000;

export function OeeView({ period, site, navigate }: { period: OEEPeriod; site: string; navigate(hash: string, replace?: boolean): void }) {
  const [answer, setAnswer] = useState<OEEAnswer>();
  const [error, setError] = useState<string>();
  const [loading, setLoading] = useState(true);

  useEffect(() => {
    const ac = new AbortController();
    const load = () => {
      const now = Date.now();
      setLoading(true);
      controlApi
        .oee({ from: now - OEE_PERIODS[period].ms, to: now, site: site || undefined }, ac.signal)
        .then((a) => {
          setAnswer(a);
          setError(undefined);
        })
        .catch((e: Error) => {
          if (e.name === 'AbortError') return;
          setError(e instanceof ApiError && e.status === 404 ? 'This server computes no OEE (GET /api/v1/oee not found).' : e.message);
        })
        .finally(() => setLoading(false));
    };
    load();
    const t = setInterval(load, REFRESH_MS);
    return () => {
      ac.abort();
      clearInterval(t);
    };
  }, [period, site]);

  const go = (p: Partial<{ period: OEEPeriod; site: string }>) => navigate(formatRoute({ view: 'oee', period, site, ...p }), true);
  const lines = answer ? oeeLines(answer) : [];
  const sites = answer?.sites ?? [];
  const top = answer ? topDowntime(answer.machines.map((m) => m.total)) : [];

  return (
    <div className="oee" data-testid="oee" data-loading={loading ? 'true' : 'false'}>
      <h1>OEE</h1>
      <div className="toolbar" role="toolbar" aria-label="OEE period">
        <div role="group" aria-label="Period" className="seg">
          {(Object.keys(OEE_PERIODS) as OEEPeriod[]).map((k) => (
            <button key={k} aria-pressed={period === k} onClick={() => go({ period: k })}>
              {OEE_PERIODS[k].label}
            </button>
          ))}
        </div>
        <label>
          Site{' '}
          <select value={site} onChange={(e) => go({ site: e.target.value })}>
            <option value="">all</option>
            {[...new Set([...sites.map((s) => s.site ?? ''), site].filter(Boolean))].sort().map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
        {answer && (
          <span className="muted small">
            {new Date(answer.from).toLocaleString()} – {new Date(answer.to).toLocaleTimeString()}
          </span>
        )}
      </div>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {answer && answer.machines.length === 0 && <p className="muted">No machine declares an OEE spec (registry entry field oee).</p>}
      {sites.length > 0 && (
        <section aria-labelledby="oee-sites-h">
          <h2 id="oee-sites-h">Sites</h2>
          <div className="oee-cards">
            {sites.map((s) => (
              <div className="oee-card" key={s.site ?? ''} data-site={s.site ?? ''}>
                <h3>{s.site || '(no site)'}</h3>
                <Figures f={s.total} />
              </div>
            ))}
          </div>
        </section>
      )}
      {top.length > 0 && (
        <section aria-labelledby="oee-down-h">
          <h2 id="oee-down-h">Top downtime reasons</h2>
          <Downtime items={top} />
        </section>
      )}
      {lines.map((g) => (
        <section key={g.key} className="oee-line" aria-label={`Line ${g.site || '(no site)'} / ${g.line || '(no line)'}`} data-line={`${g.site}/${g.line}`}>
          <h2>
            {g.site || '(no site)'} / {g.line || '(no line)'} <span className="muted small">OEE {fmtPct(g.total.oee)}</span>
          </h2>
          <div className="oee-line-body">
            <Figures f={g.total} />
            <Downtime items={topDowntime(g.machines.map((m) => m.total), 5)} />
          </div>
          <table className="oee-table">
            <thead>
              <tr>
                <th>machine</th>
                <th>OEE</th>
                <th>availability</th>
                <th>performance</th>
                <th>quality</th>
                <th>good / total</th>
                <th>top downtime</th>
              </tr>
            </thead>
            <tbody>
              {g.machines.map((m) => (
                <tr key={m.machine} data-machine={m.machine}>
                  <td>
                    <a href={formatRoute({ view: 'machine', id: m.machine, range: { kind: 'live', spanMs: 120_000, label: 'live' } })}>{m.machine}</a>
                  </td>
                  <td data-testid="oee-value">{fmtPct(m.total.oee)}</td>
                  <td>
                    <Bar v={m.total.availability} kind="a" />
                  </td>
                  <td>
                    <Bar v={m.total.performance} kind="p" />
                  </td>
                  <td>
                    <Bar v={m.total.quality} kind="q" />
                  </td>
                  <td>
                    {m.total.goodCount} / {m.total.totalCount}
                  </td>
                  <td className="small">
                    {topDowntime([m.total], 2)
                      .map((d) => `${d.state} ${fmtDuration(d.ms)}`)
                      .join(', ') || '—'}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
      ))}
    </div>
  );
}

const KIND_LABEL = { a: 'availability', p: 'performance', q: 'quality', oee: 'OEE' } as const;

function Bar({ v, kind }: { v: number | null | undefined; kind: keyof typeof KIND_LABEL }) {
  return (
    <span className={`oee-bar oee-${kind}`} title={`${KIND_LABEL[kind]} ${fmtPct(v)}`}>
      <span className="oee-bar-track" aria-hidden="true">
        <span className="oee-bar-fill" style={{ width: `${barWidth(v)}%` }} />
      </span>
      <span className="oee-bar-label">{fmtPct(v)}</span>
    </span>
  );
}

function Figures({ f }: { f: OEEFigures }) {
  return (
    <dl className="oee-figures">
      {(['oee', 'a', 'p', 'q'] as const).map((k) => {
        const v = k === 'oee' ? f.oee : k === 'a' ? f.availability : k === 'p' ? f.performance : f.quality;
        return (
          <div key={k} data-figure={k}>
            <dt>{KIND_LABEL[k]}</dt>
            <dd>
              <Bar v={v} kind={k} />
            </dd>
          </div>
        );
      })}
      <div>
        <dt>run / planned</dt>
        <dd className="small">
          {fmtDuration(f.runMs)} / {fmtDuration(f.plannedMs)}
        </dd>
      </div>
    </dl>
  );
}

function Downtime({ items }: { items: { state: string; ms: number }[] }) {
  if (items.length === 0) return <p className="muted small">No downtime.</p>;
  const max = items[0].ms || 1;
  return (
    <ol className="downtime" data-testid="downtime">
      {items.map((d) => (
        <li key={d.state} data-state={d.state}>
          <span className="downtime-name">{d.state}</span>
          <span className="downtime-track" aria-hidden="true">
            <span className={`downtime-fill state-${stateClass(d.state)}`} style={{ width: `${(d.ms / max) * 100}%` }} />
          </span>
          <span className="small">{fmtDuration(d.ms)}</span>
        </li>
      ))}
    </ol>
  );
}
