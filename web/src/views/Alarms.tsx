import { useEffect, useState, type FormEvent } from 'react';
import { api, type Alarm, type DeliveryState, type ListedAlarm } from '../lib/api';
import { can, type Session } from '../lib/session';
import { formatRoute } from '../lib/route';
import { FLEET_FILTER, dashboard } from '../lib/store';
import { fmtNum, fmtTime } from './common';
import { DownloadLink } from './Download';
import { alarmsCsvUrl } from '../lib/download';

/** Severity as shown: threshold breaches are critical, silence a warning. */
export function severity(a: Alarm): 'critical' | 'warning' {
  return a.kind === 'offline' ? 'warning' : 'critical';
}

export function AlarmsView({ session }: { session: Session }) {
  const mayAck = can(session, 'operate');
  const [active, setActive] = useState<ListedAlarm[]>([]);
  const [journal, setJournal] = useState<ListedAlarm[]>([]);
  const [error, setError] = useState<string>();

  useEffect(() => {
    dashboard.subscribe(FLEET_FILTER);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const load = async () => {
      try {
        const [a, j] = await Promise.all([api.alarms('active'), api.alarms('all')]);
        setActive(a.alarms);
        setJournal(j.alarms.slice(0, 500));
        setError(undefined);
      } catch (e) {
        setError((e as Error).message);
      }
    };
    void load();
    const reload = () => {
      clearTimeout(timer);
      timer = setTimeout(() => void load(), 200);
    };
    const off = dashboard.onMessages((m) => m.type === 'alarm' && reload());
    const offGap = dashboard.onGap(reload);
    const poll = setInterval(load, 15_000);
    return () => {
      off();
      offGap();
      clearInterval(poll);
      clearTimeout(timer);
    };
  }, []);

  return (
    <div className="alarms">
      <h1>
        Active alarms <span className="muted">({active.length})</span>{' '}
        <DownloadLink href={() => alarmsCsvUrl('active')} />
      </h1>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      <table data-testid="active-alarms">
        <thead>
          <tr>
            <th>severity</th>
            <th>machine</th>
            <th>alarm</th>
            <th>value</th>
            <th>raised</th>
            <th>state</th>
            <th>delivery</th>
            <th>acknowledge</th>
          </tr>
        </thead>
        <tbody>
          {active.map((a) => (
            <AlarmRow
              key={a.id}
              a={a}
              mayAck={mayAck}
              onAcked={(x) => setActive((xs) => xs.map((y) => (y.id === x.id ? { ...x, delivery: y.delivery } : y)))}
            />
          ))}
          {active.length === 0 && (
            <tr>
              <td colSpan={8} className="muted">
                No active alarms.
              </td>
            </tr>
          )}
        </tbody>
      </table>
      <h2>
        Journal <DownloadLink href={() => alarmsCsvUrl('all')} />
      </h2>
      <table data-testid="journal">
        <thead>
          <tr>
            <th>raised</th>
            <th>machine</th>
            <th>alarm</th>
            <th>state</th>
            <th>cleared</th>
            <th>acknowledged</th>
            <th>delivery</th>
          </tr>
        </thead>
        <tbody>
          {journal.map((a) => (
            <tr key={a.id}>
              <td>{fmtTime(a.raisedAt)}</td>
              <td>
                <a href={formatRoute({ view: 'machine', id: a.machine, range: { kind: 'live', spanMs: 120_000, label: 'live' } })}>{a.machine}</a>
              </td>
              <td>{describe(a)}</td>
              <td>{a.state}</td>
              <td>{a.clearedAt ? fmtTime(a.clearedAt) : '—'}</td>
              <td>{a.acknowledged ? `${a.acknowledgedBy ?? ''} ${fmtTime(a.acknowledgedAt)}: ${a.acknowledgeNote ?? ''}`.trim() : '—'}</td>
              <td>
                <Delivery a={a} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function describe(a: Alarm): string {
  if (a.kind === 'offline') return 'offline';
  return `${a.metric ?? ''} ${a.kind === 'high' ? '>' : a.kind === 'low' ? '<' : a.kind} ${a.limit ?? ''}`;
}

/** Where the alarm went beyond twinline: Alertmanager and the webhook,
 * when configured (docs/alerting.md). */
function Delivery({ a }: { a: ListedAlarm }) {
  const targets: [string, DeliveryState | undefined][] = [
    ['Alertmanager', a.delivery?.alertmanager],
    ['webhook', a.delivery?.webhook],
  ];
  const shown = targets.filter((t): t is [string, DeliveryState] => t[1] !== undefined);
  if (shown.length === 0) return <span className="muted">—</span>;
  return (
    <span className="delivery" data-testid="delivery">
      {shown.map(([name, st]) => (
        <span
          key={name}
          className={`badge delivery-${st.state}`}
          data-target={name}
          data-state={st.state}
          title={[
            `${st.attempts} attempt${st.attempts === 1 ? '' : 's'}`,
            st.deliveredAt ? `delivered ${fmtTime(st.deliveredAt)}` : '',
            st.lastError ? `last error: ${st.lastError}` : '',
          ]
            .filter(Boolean)
            .join('\n')}
        >
          {name} {st.state === 'delivered' ? '✓' : st.state === 'failed' ? '✗' : st.state}
          {st.state === 'retrying' ? ` (${st.attempts})` : ''}
        </span>
      ))}
    </span>
  );
}

function AlarmRow({ a, mayAck, onAcked }: { a: ListedAlarm; mayAck: boolean; onAcked(a: Alarm): void }) {
  const [open, setOpen] = useState(false);
  const [note, setNote] = useState('');
  const [err, setErr] = useState<string>();
  const sev = severity(a);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    try {
      onAcked(await api.ack(a.id, note.trim()));
      setOpen(false);
    } catch (x) {
      setErr((x as Error).message);
    }
  };
  return (
    <tr data-alarm={a.id} data-machine={a.machine} className={`sev-${sev}`}>
      <td>
        <span className={`badge sev-${sev}`}>
          <span aria-hidden="true">{sev === 'critical' ? '▲' : '◆'}</span> {sev}
        </span>
      </td>
      <td>
        <a href={formatRoute({ view: 'machine', id: a.machine, range: { kind: 'live', spanMs: 120_000, label: 'live' } })}>{a.machine}</a>
      </td>
      <td>{describe(a)}</td>
      <td>{fmtNum(a.value)}</td>
      <td>{fmtTime(a.raisedAt)}</td>
      <td>
        <Delivery a={a} />
      </td>
      <td data-testid="ack-state" data-acked={a.acknowledged}>
        {a.acknowledged ? `acknowledged${a.acknowledgedBy ? ` by ${a.acknowledgedBy}` : ''}` : 'unacknowledged'}
      </td>
      <td>
        {a.acknowledged ? (
          <span className="muted">{a.acknowledgeNote}</span>
        ) : open ? (
          <form onSubmit={submit} className="ack-form" aria-label={`Acknowledge alarm ${a.id}`}>
            <input aria-label="Note" placeholder="note" value={note} onChange={(e) => setNote(e.target.value)} autoFocus />
            <button type="submit">Acknowledge</button>
            <button type="button" onClick={() => setOpen(false)}>
              Cancel
            </button>
            {err && (
              <span className="error" role="alert">
                {err}
              </span>
            )}
          </form>
        ) : mayAck ? (
          <button onClick={() => setOpen(true)}>Acknowledge…</button>
        ) : (
          <span className="muted" title="Acknowledging needs the operate scope">
            —
          </span>
        )}
      </td>
    </tr>
  );
}
