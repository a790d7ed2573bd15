import { useEffect, useMemo, useState, type FormEvent } from 'react';
import { api, ApiError } from '../lib/api';
import { MachineFeed } from '../lib/feed';
import { formatRoute, LIVE_SPANS, type Range } from '../lib/route';
import { can, type Session } from '../lib/session';
import { dashboard } from '../lib/store';
import type { MachineControl } from '../lib/control';
import { Chart } from './Chart';
import { DownloadLink } from './Download';
import { exportUrl } from '../lib/download';
import { CommandsPanel, TwinPanel } from './Control';
import { StateTimeline } from './Timeline';
import { AlarmBadge, StatusBadge, fmtAgo, fmtNum, fmtTime, useTick } from './common';

interface Props {
  id: string;
  range: Range;
  metrics?: string[];
  navigate(hash: string, replace?: boolean): void;
  session: Session;
}

export function MachineView({ id, range, metrics: chosen, navigate, session }: Props) {
  const feed = useMemo(() => new MachineFeed(id), [id]);
  const [, setVersion] = useState(0);
  const [error, setError] = useState<string>();
  // the machine does not exist, or is of a site this identity does not see (the server answers 404 alike)
  const [notFound, setNotFound] = useState(false);
  useTick(1000);

  // subscribe to the machine's stream; re-render (text, lists) at most ~4 times a second
  useEffect(() => {
    dashboard.subscribe({ machines: [id] });
    let pending = false;
    const unsub = feed.listen(() => {
      if (pending) return;
      pending = true;
      setTimeout(() => {
        pending = false;
        setVersion((v) => v + 1);
      }, 250);
    });
    feed.loadMeta().catch((e: Error) => {
      if (e instanceof ApiError && e.status === 404) {
        setNotFound(true);
        dashboard.stream.stop(); // nothing to stream; the next view subscribes again
      } else setError(e.message);
    });
    return () => unsub();
  }, [feed, id]);

  const allMetrics = Object.keys(feed.latest?.metrics ?? feed.machine?.metrics ?? {}).sort();
  const metrics = chosen?.length ? chosen : defaultMetrics(allMetrics);
  const live = range.kind === 'live';
  const rangeKey = live ? range.label : `${range.from}~${range.to}`;

  // stream messages, history for the range, median/rate polling, gap backfill
  useEffect(() => {
    const ac = new AbortController();
    const offMsg = dashboard.onMessages((m) => feed.apply(m, live));
    const width = () => Math.max(200, (document.querySelector('[data-testid=chart]')?.clientWidth ?? 1000) - 80);
    const offGap = dashboard.onGap((g) => {
      if (live) void feed.backfill(g, metrics, range.spanMs, width(), ac.signal).catch(() => {});
      void feed.loadMeta().catch(() => {});
    });
    let poll: ReturnType<typeof setInterval> | undefined;
    if (metrics.length) {
      feed.reset();
      const now = Date.now();
      const from = live ? now - range.spanMs : range.from;
      const to = live ? now : range.to;
      feed.loadHistory(metrics, from, to, width(), ac.signal).catch((e: Error) => e.name !== 'AbortError' && setError(e.message));
    }
    if (live && !notFound) {
      poll = setInterval(() => void feed.pollLatest().catch(() => {}), 1000);
    }
    return () => {
      ac.abort();
      offMsg();
      offGap();
      clearInterval(poll);
    };
    // metrics.join: a new set of metrics reloads; the array identity does not matter
  }, [feed, rangeKey, metrics.join(','), notFound]);

  const go = (patch: Partial<{ range: Range; metrics: string[] }>) =>
    navigate(formatRoute({ view: 'machine', id, range, metrics: chosen, ...patch }));

  const toggleMetric = (m: string) => {
    const next = metrics.includes(m) ? metrics.filter((x) => x !== m) : [...metrics, m].sort();
    go({ metrics: next });
  };

  const m = feed.machine;
  const l = feed.latest;
  const status = l?.status ?? m?.status ?? 'offline';
  const alarm = l?.alarm ?? m?.alarm ?? false;
  // the registry entry's control part (desiredSchema, commands, oee): ./wire has no types for it yet
  const control = m as MachineControl | undefined;

  if (notFound) {
    return (
      <div className="machine not-found" data-testid="not-found">
        <h1>
          <a href="#/" className="muted back">
            Fleet
          </a>{' '}
          / {id}
        </h1>
        <p role="alert">
          Machine <strong>{id}</strong> not found: it does not exist, or you may not see it.
        </p>
        <p>
          <a href="#/">Back to the fleet</a>
        </p>
      </div>
    );
  }

  return (
    <div className="machine">
      <div className="machine-head">
        <h1>
          <a href="#/" className="muted back">
            Fleet
          </a>{' '}
          / {m?.name || id}
        </h1>
        <StatusBadge status={status} />
        {alarm && <AlarmBadge />}
        <span className="muted" data-testid="last-seen">
          last seen {l?.lastSeen ? fmtAgo(l.lastSeen) : '—'}
        </span>
        <span className="muted">
          rate {fmtNum(l?.rate1m)}/s (1 m) · {fmtNum(l?.rate5m)}/s (5 m)
        </span>
      </div>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      <div className="toolbar" role="toolbar" aria-label="Chart controls">
        <div role="group" aria-label="Time range" className="seg">
          {Object.keys(LIVE_SPANS).map((k) => (
            <button
              key={k}
              aria-pressed={live && range.label === k}
              onClick={() => go({ range: { kind: 'live', spanMs: LIVE_SPANS[k], label: k } })}
            >
              {k === 'live' ? '● live' : `last ${k}`}
            </button>
          ))}
        </div>
        <CustomRange range={range} onApply={(from, to) => go({ range: { kind: 'custom', from, to } })} />
        {!live && (
          <button className="primary" onClick={() => go({ range: { kind: 'live', spanMs: LIVE_SPANS.live, label: 'live' } })}>
            Back to live
          </button>
        )}
        {metrics.length > 0 && (
          <DownloadLink
            title="The shown metrics' samples over the shown range, one row per sample"
            href={() => {
              const now = Date.now();
              return exportUrl(id, metrics, live ? { from: now - range.spanMs, to: now } : { from: range.from, to: range.to });
            }}
          />
        )}
        <div role="group" aria-label="Metrics" className="metric-picks">
          {allMetrics.map((x) => (
            <label key={x}>
              <input type="checkbox" checked={metrics.includes(x)} onChange={() => toggleMetric(x)} /> {x}
            </label>
          ))}
        </div>
      </div>
      <StateTimeline id={id} control={control} range={range} />
      {metrics.length > 0 ? (
        <Chart
          feed={feed}
          metrics={metrics}
          range={range}
          onZoom={(from, to) => go({ range: { kind: 'custom', from, to } })}
          onLive={() => go({ range: { kind: 'live', spanMs: LIVE_SPANS.live, label: 'live' } })}
        />
      ) : (
        <p className="muted">No metrics yet.</p>
      )}
      <p className="legend muted">
        Drag across the chart to zoom into history (downsampled to the chart width); double-click or “Back to live” returns.
        Solid: samples · dashed: sliding median · shaded: 10 s window min–max · dotted red: thresholds · ✕ alarms · ✎ notes.
      </p>
      <div className="columns control-columns">
        <TwinPanel id={id} control={control} session={session} />
        <CommandsPanel id={id} control={control} session={session} />
      </div>
      <div className="columns">
        <section aria-labelledby="latest-h">
          <h2 id="latest-h">Latest</h2>
          <table>
            <thead>
              <tr>
                <th>metric</th>
                <th>value</th>
                <th>median</th>
                <th>threshold</th>
                <th>event time</th>
              </tr>
            </thead>
            <tbody>
              {allMetrics.map((k) => {
                const v = l?.metrics[k];
                const th = m?.thresholds?.[k];
                return (
                  <tr key={k}>
                    <td>{k}</td>
                    <td>{fmtNum(v?.value)}</td>
                    <td>{fmtNum(v?.median)}</td>
                    <td>
                      {th ? [th.low !== undefined && `≥ ${th.low}`, th.high !== undefined && `≤ ${th.high}`].filter(Boolean).join(', ') : '—'}
                    </td>
                    <td>{v ? new Date(v.ts).toLocaleTimeString() : '—'}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          <h2>Twin</h2>
          <dl className="meta">
            <dt>id</dt>
            <dd>{id}</dd>
            <dt>site / line</dt>
            <dd>{[m?.site, m?.line].filter(Boolean).join(' / ') || '—'}</dd>
            {Object.entries(m?.attributes ?? {}).map(([k, v]) => (
              <FragmentRow key={k} k={k} v={String(v)} />
            ))}
            <dt>registered</dt>
            <dd>{fmtTime(m?.createdAt)}</dd>
          </dl>
          <h2>Alarms</h2>
          <ul className="alarm-list">
            {feed.alarms.slice(0, 10).map((a) => (
              <li key={a.id}>
                <span className={`badge ${a.state === 'active' ? 'status-alarm' : 'status-online'}`}>
                  {a.state === 'active' ? '▲' : '✓'} {a.state}
                </span>{' '}
                {a.metric ?? ''} {a.kind} {a.limit ?? ''} at {fmtTime(a.raisedAt)} {a.acknowledged && `· acknowledged${a.acknowledgedBy ? ` by ${a.acknowledgedBy}` : ''}`}
              </li>
            ))}
            {feed.alarms.length === 0 && <li className="muted">none</li>}
          </ul>
        </section>
        <Notes feed={feed} session={session} />
      </div>
    </div>
  );
}

const PREFERRED = ['temp', 'vibration', 'rpm', 'power', 'pressure', 'flow', 'current'];

/** The metrics charted by default: up to four, the usual process values first. */
export function defaultMetrics(all: string[]): string[] {
  const rank = (m: string) => {
    const i = PREFERRED.indexOf(m);
    return i < 0 ? PREFERRED.length : i;
  };
  return [...all].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : 1)).slice(0, 4);
}

function FragmentRow({ k, v }: { k: string; v: string }) {
  return (
    <>
      <dt>{k}</dt>
      <dd>{v}</dd>
    </>
  );
}

function toLocalInput(ms: number): string {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 16);
}

function CustomRange({ range, onApply }: { range: Range; onApply(from: number, to: number): void }) {
  const now = Date.now();
  const [from, setFrom] = useState(toLocalInput(range.kind === 'custom' ? range.from : now - 3_600_000));
  const [to, setTo] = useState(toLocalInput(range.kind === 'custom' ? range.to : now));
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const a = new Date(from).getTime();
    const b = new Date(to).getTime();
    if (a < b) onApply(a, b);
  };
  return (
    <form className="custom-range" onSubmit={submit} aria-label="Custom time range">
      <label>
        from <input type="datetime-local" value={from} onChange={(e) => setFrom(e.target.value)} />
      </label>
      <label>
        to <input type="datetime-local" value={to} onChange={(e) => setTo(e.target.value)} />
      </label>
      <button type="submit">Show</button>
    </form>
  );
}

function Notes({ feed, session }: { feed: MachineFeed; session: Session }) {
  const mayWrite = can(session, 'operate');
  // an open server records the author given; a signed-in identity is its own author
  const askAuthor = !session.authRequired;
  const [text, setText] = useState('');
  const [author, setAuthor] = useState(() => localStorage.getItem('twinline.author') ?? 'operator');
  const [busy, setBusy] = useState(false);
  const [err, setErr] = useState<string>();
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!text.trim()) return;
    setBusy(true);
    setErr(undefined);
    try {
      let by = session.name;
      if (askAuthor) {
        localStorage.setItem('twinline.author', author);
        by = author.trim() || 'operator';
      }
      const n = await api.postNote(feed.id, text.trim(), by);
      feed.addNote(n);
      setText('');
    } catch (x) {
      setErr((x as Error).message);
    } finally {
      setBusy(false);
    }
  };
  return (
    <section aria-labelledby="notes-h" className="notes">
      <h2 id="notes-h">Notes</h2>
      <ol className="note-list" data-testid="notes" aria-live="polite">
        {feed.notes.map((n) => (
          <li key={n.id}>
            <div className="note-meta muted">
              {n.author} · {fmtTime(n.time)}
            </div>
            <div className="note-text">{n.text}</div>
          </li>
        ))}
        {feed.notes.length === 0 && <li className="muted">No notes yet.</li>}
      </ol>
      {!mayWrite ? (
        <p className="muted">Writing notes needs the operate scope.</p>
      ) : (
        <form onSubmit={submit} className="note-form">
          <label>
            Note
            <textarea value={text} onChange={(e) => setText(e.target.value)} rows={2} placeholder="For the next shift…" required />
          </label>
          {askAuthor && (
            <label>
              by <input value={author} onChange={(e) => setAuthor(e.target.value)} />
            </label>
          )}
          <button type="submit" disabled={busy}>
            Post note
          </button>
          {err && (
            <span className="error" role="alert">
              {err}
            </span>
          )}
        </form>
      )}
    </section>
  );
}
