import { useEffect, useState } from 'react';
import { dashboard } from '../lib/store';
import { traceUrl } from '../lib/tracing';
import type { ConnInfo } from '../lib/stream';

export function fmtNum(v: number | undefined | null): string {
  if (v === undefined || v === null || !Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 100) return v.toFixed(1);
  return v.toFixed(2);
}

export function fmtAgo(ms: number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 2) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

export function fmtTime(v: string | number | undefined): string {
  if (v === undefined || v === '') return '—';
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? String(v) : d.toLocaleString();
}

const STATUS_TEXT: Record<string, [string, string]> = {
  online: ['●', 'online'],
  offline: ['○', 'offline'],
  alarm: ['▲', 'alarm'],
};

/** A liveness (or alarm) shown by colour, icon and label together. */
export function StatusBadge({ status }: { status: string }) {
  const s = STATUS_TEXT[status] ? status : 'online';
  const [icon, label] = STATUS_TEXT[s];
  return (
    <span className={`badge status-${s}`} data-testid="status">
      <span aria-hidden="true">{icon}</span> {label}
    </span>
  );
}

/** The mark of a machine in alarm (an active alarm other than offline), next to its liveness. */
export function AlarmBadge() {
  const [icon, label] = STATUS_TEXT.alarm;
  return (
    <span className="badge status-alarm" data-testid="alarm">
      <span aria-hidden="true">{icon}</span> {label}
    </span>
  );
}

/** Re-renders every ms milliseconds. */
export function useTick(ms: number): number {
  const [n, setN] = useState(0);
  useEffect(() => {
    const t = setInterval(() => setN((x) => x + 1), ms);
    return () => clearInterval(t);
  }, [ms]);
  return n;
}

export function ConnIndicator() {
  const [c, setC] = useState<ConnInfo>(dashboard.conn);
  useEffect(() => dashboard.onConn(setC), []);
  useTick(1000);
  let text: string;
  switch (c.state) {
    case 'live':
      text = 'live';
      break;
    case 'connecting':
      text = 'connecting…';
      break;
    case 'reconnecting': {
      const secs = c.retryAt ? Math.max(0, Math.ceil((c.retryAt - Date.now()) / 1000)) : 0;
      text = c.retryAt && secs > 0 ? `reconnecting in ${secs}s (attempt ${c.attempt})` : 'reconnecting…';
      break;
    }
    default:
      text = 'stopped';
  }
  return (
    <span className={`conn conn-${c.state}`} data-testid="conn" data-state={c.state} role="status" title={c.reason ?? ''}>
      <span aria-hidden="true">{c.state === 'live' ? '●' : c.state === 'stopped' ? '■' : '◌'}</span> {text}
      {c.state === 'reconnecting' && (
        <button className="link" onClick={() => dashboard.stream.reconnectNow()}>
          retry now
        </button>
      )}
    </span>
  );
}

export function LatencyBadge() {
  useTick(1000);
  const s = dashboard.latency.stats();
  const cls = s.p50 === undefined ? '' : s.p50 < 500 ? 'good' : s.p50 < 2000 ? 'warn' : 'bad';
  const title = `sensor → screen over the last ${s.n} samples drawn: p50 ${fmtMs(s.p50)}, p99 ${fmtMs(s.p99)}; server share p50 ${fmtMs(s.serverP50)}`;
  const body = (
    <>
      sensor→screen {fmtMs(s.p50)} <span className="muted">p99 {fmtMs(s.p99)}</span>
    </>
  );
  // with a trace viewer configured: the trace of the newest traced render
  const href = traceUrl(dashboard.traces.uiUrl, dashboard.traces.lastTraceId);
  if (href) {
    return (
      <a
        className={`latency ${cls}`}
        data-testid="latency"
        href={href}
        target="_blank"
        rel="noopener noreferrer"
        title={`${title}. Open the trace of the latest traced render (sensor → screen, every leg).`}
      >
        {body}
      </a>
    );
  }
  return (
    <span className={`latency ${cls}`} data-testid="latency" title={title}>
      {body}
    </span>
  );
}

function fmtMs(v: number | undefined): string {
  if (v === undefined) return '—';
  return v < 1000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(1)} s`;
}
