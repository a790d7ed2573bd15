/**
 * The machine page's control panels (issue 15): the twin (desired vs
 * reported, the delta highlighted, each field's age, setpoints editable
 * with a confirmation and If-Match), the commands the registry entry
 * declares (a form per command from its params schema) and their live
 * history.
 */
import { useEffect, useRef, useState, type FormEvent, type ReactNode } from 'react';
import { ApiError } from '../lib/api';
import {
  applyCommand,
  asControlMessage,
  editableFields,
  fieldText,
  fmtValue,
  isTerminal,
  newerTwin as newer,
  newIdempotencyKey,
  parseField,
  parseForm,
  schemaFields,
  twinOfMessage,
  twinRows,
  type Command,
  type CommandSpec,
  type FormField,
  type MachineControl,
  type Twin,
} from '../lib/control';
import { controlApi } from '../lib/controlApi';
import { can, type Session } from '../lib/session';
import { dashboard } from '../lib/store';
import { fmtAgo, fmtTime } from './common';

const OPERATE_HINT = 'Needs the operate scope.';

/** The twin of machine id, loaded once and kept live from the stream; undefined while loading or when the server has none. */
function useTwin(id: string): { twin?: Twin; missing: boolean; deleted: boolean; error?: string; reload(): void; set(t: Twin): void } {
  const [twin, setTwin] = useState<Twin>();
  const [deleted, setDeleted] = useState(false);
  const [missing, setMissing] = useState(false);
  const [error, setError] = useState<string>();
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    controlApi
      .twin(id)
      .then((t) => live && (setTwin((cur) => newer(cur, t)), setMissing(false)))
      .catch((e: Error) => {
        if (!live) return;
        if (e instanceof ApiError && (e.status === 404 || e.status === 405)) setMissing(true);
        else setError(e.message);
      });
    const offMsg = dashboard.onMessages((m) => {
      const c = asControlMessage(m);
      if (c?.type !== 'twin' || c.machine !== id) return;
      if (c.data.deleted) {
        setTwin(undefined);
        setDeleted(true);
        return;
      }
      const t = twinOfMessage(c.data);
      if (!t) return;
      setDeleted(false);
      setTwin((cur) => newer(cur, t));
    });
    const offGap = dashboard.onGap(() => setN((x) => x + 1));
    return () => {
      live = false;
      offMsg();
      offGap();
    };
  }, [id, n]);
  return { twin, missing, deleted, error, reload: () => setN((x) => x + 1), set: (t) => setTwin((cur) => newer(cur, t)) };
}

interface PanelProps {
  id: string;
  control: MachineControl | undefined;
  session: Session;
}

export function TwinPanel({ id, control, session }: PanelProps) {
  const { twin, missing, deleted, error, reload, set } = useTwin(id);
  const mayOperate = can(session, 'operate');
  const editable = editableFields(control?.desiredSchema);
  const [editing, setEditing] = useState<{ field: FormField; text: string; error?: string }>();
  const [confirm, setConfirm] = useState<{ field: FormField; value: unknown; version: number }>();
  const [busy, setBusy] = useState(false);
  const [msg, setMsg] = useState<{ kind: 'error' | 'ok'; text: string }>();

  if (missing) return null;
  const rows = twin ? twinRows(twin) : [];
  // schema fields never set yet get a row too: they can be set from here
  for (const name of editable.keys()) {
    if (!rows.some((r) => r.path === name)) {
      rows.push({ path: name, desired: undefined, reported: twin?.reported[name], hasDesired: false, hasReported: twin ? name in twin.reported : false, pending: false });
    }
  }
  rows.sort((a, b) => (a.path < b.path ? -1 : 1));
  const pendingCount = rows.filter((r) => r.pending).length;

  const startEdit = (path: string) => {
    const f = editable.get(path);
    if (!f) return;
    setMsg(undefined);
    const cur = twin?.desired[path] ?? twin?.reported[path];
    setEditing({ field: f, text: f.kind === 'enum' ? fieldText(f, cur ?? f.options?.[0]) : fieldText(f, cur) });
  };

  const review = (e: FormEvent) => {
    e.preventDefault();
    if (!editing || !twin) return;
    const r = parseField({ ...editing.field, required: true }, editing.text);
    if ('error' in r) setEditing({ ...editing, error: r.error });
    else if ('value' in r) setConfirm({ field: editing.field, value: r.value, version: twin.version });
  };

  const apply = async () => {
    if (!confirm) return;
    setBusy(true);
    try {
      const t = await controlApi.patchDesired(id, { [confirm.field.name]: confirm.value }, confirm.version);
      set(t);
      setMsg({ kind: 'ok', text: `Desired ${confirm.field.name} set to ${fmtValue(confirm.value)} (version ${t.version}).` });
      setEditing(undefined);
    } catch (e) {
      if (e instanceof ApiError && e.status === 412) {
        setMsg({ kind: 'error', text: 'The desired document changed meanwhile: reloaded it; check the values and try again.' });
        reload();
      } else setMsg({ kind: 'error', text: (e as Error).message });
    } finally {
      setBusy(false);
      setConfirm(undefined);
    }
  };

  return (
    <section aria-labelledby="twin-h" className="twin-panel" data-testid="twin-panel" data-version={twin?.version ?? ''}>
      <h2 id="twin-h">
        Desired vs reported{' '}
        {twin && (
          <span className="muted small">
            version {twin.version} · reported {twin.reportedVersion}
            {pendingCount > 0 && (
              <>
                {' '}
                · <span className="delta-count">{pendingCount} not yet reported</span>
              </>
            )}
          </span>
        )}
      </h2>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {deleted && <p className="muted">The machine was deleted from the registry: its twin is gone.</p>}
      {!twin && !error && !deleted && <p className="muted">Loading the twin…</p>}
      {twin && rows.length === 0 && <p className="muted">Nothing desired or reported yet.</p>}
      {rows.length > 0 && (
        <table className="twin-table">
          <thead>
            <tr>
              <th>field</th>
              <th>desired</th>
              <th>reported</th>
              <th>
                <span className="sr-only">actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => (
              <tr key={r.path} className={r.pending ? 'delta' : undefined} data-field={r.path} data-pending={r.pending ? 'true' : 'false'}>
                <td>
                  {r.path}
                  {r.pending && (
                    <span className="badge delta-badge" title="desired but not reported so yet">
                      Δ<span className="sr-only"> pending</span>
                    </span>
                  )}
                </td>
                <td data-testid="desired">
                  <span className="twin-value">{r.hasDesired ? fmtValue(r.desired) : '—'}</span>
                  {r.desiredAt !== undefined && <span className="age muted" title={fmtTime(r.desiredAt)}> {fmtAgo(r.desiredAt)}</span>}
                </td>
                <td data-testid="reported">
                  <span className="twin-value">{r.hasReported ? fmtValue(r.reported) : '—'}</span>
                  {r.reportedAt !== undefined && <span className="age muted" title={fmtTime(r.reportedAt)}> {fmtAgo(r.reportedAt)}</span>}
                </td>
                <td>
                  {editable.has(r.path) && (
                    <button
                      onClick={() => startEdit(r.path)}
                      disabled={!mayOperate || !twin}
                      title={mayOperate ? `Set the desired ${r.path}` : OPERATE_HINT}
                      aria-label={`Edit ${r.path}`}
                    >
                      Edit
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {!mayOperate && editable.size > 0 && <p className="muted">Changing setpoints needs the operate scope.</p>}
      {editing && (
        <form className="setpoint-form" onSubmit={review} noValidate aria-label={`Set ${editing.field.name}`}>
          <FieldInput field={{ ...editing.field, required: true }} text={editing.text} onChange={(text) => setEditing({ ...editing, text, error: undefined })} />
          <button type="submit" className="primary">
            Review…
          </button>
          <button type="button" onClick={() => setEditing(undefined)}>
            Cancel
          </button>
          {editing.error && (
            <span className="error" role="alert">
              {editing.field.name}: {editing.error}
            </span>
          )}
        </form>
      )}
      {msg && (
        <p className={msg.kind === 'error' ? 'error' : 'ok'} role={msg.kind === 'error' ? 'alert' : 'status'}>
          {msg.text}
        </p>
      )}
      {confirm && (
        <ConfirmDialog
          title={`Change ${confirm.field.name}?`}
          confirmLabel="Apply"
          busy={busy}
          onConfirm={() => void apply()}
          onCancel={() => setConfirm(undefined)}
        >
          Set the desired <strong>{confirm.field.name}</strong> of {id} from {fmtValue(twin?.desired[confirm.field.name])} to{' '}
          <strong>{fmtValue(confirm.value)}</strong>
          {twin && confirm.field.name in twin.reported && <> (reported now: {fmtValue(twin.reported[confirm.field.name])})</>}. The
          machine applies it when it next reads its desired document.
        </ConfirmDialog>
      )}
    </section>
  );
}

/** A modal confirmation: focus on the confirm button, Escape cancels. */
export function ConfirmDialog({
  title,
  children,
  confirmLabel,
  busy,
  onConfirm,
  onCancel,
}: {
  title: string;
  children: ReactNode;
  confirmLabel: string;
  busy?: boolean;
  onConfirm(): void;
  onCancel(): void;
}) {
  const ok = useRef<HTMLButtonElement>(null);
  useEffect(() => ok.current?.focus(), []);
  return (
    <div className="modal-backdrop" onKeyDown={(e) => e.key === 'Escape' && onCancel()}>
      <div className="modal" role="dialog" aria-modal="true" aria-labelledby="confirm-h" data-testid="confirm">
        <h3 id="confirm-h">{title}</h3>
        <p>{children}</p>
        <div className="modal-actions">
          <button ref={ok} className="primary" onClick={onConfirm} disabled={busy}>
            {confirmLabel}
          </button>
          <button onClick={onCancel} disabled={busy}>
            Cancel
          </button>
        </div>
      </div>
    </div>
  );
}

/** One input for a form field, by kind. */
function FieldInput({ field: f, text, onChange, error }: { field: FormField; text: string; onChange(t: string): void; error?: string }) {
  const label = (
    <>
      {f.name}
      {f.required && <span aria-hidden="true"> *</span>}
      {f.description && <span className="muted small"> {f.description}</span>}
    </>
  );
  let input;
  switch (f.kind) {
    case 'enum':
      input = (
        <select value={text} onChange={(e) => onChange(e.target.value)} aria-invalid={!!error} required={f.required}>
          {!f.required && <option value="">—</option>}
          {f.options?.map((o) => (
            <option key={JSON.stringify(o)} value={JSON.stringify(o)}>
              {typeof o === 'string' ? o : JSON.stringify(o)}
            </option>
          ))}
        </select>
      );
      break;
    case 'boolean':
      input = (
        <select value={text} onChange={(e) => onChange(e.target.value)} aria-invalid={!!error}>
          {!f.required && <option value="">—</option>}
          <option value="true">true</option>
          <option value="false">false</option>
        </select>
      );
      break;
    case 'number':
    case 'integer':
      input = (
        <input
          type="number"
          inputMode="decimal"
          step={f.kind === 'integer' ? 1 : 'any'}
          min={f.min}
          max={f.max}
          value={text}
          onChange={(e) => onChange(e.target.value)}
          aria-invalid={!!error}
        />
      );
      break;
    case 'string':
      input = <input value={text} maxLength={f.maxLength} onChange={(e) => onChange(e.target.value)} aria-invalid={!!error} />;
      break;
    default:
      input = <textarea rows={2} value={text} onChange={(e) => onChange(e.target.value)} placeholder="JSON" aria-invalid={!!error} />;
  }
  const bounds = f.min !== undefined || f.max !== undefined ? ` (${f.min ?? '…'}–${f.max ?? '…'})` : '';
  return (
    <label className="field">
      <span>
        {label}
        {bounds && <span className="muted small">{bounds}</span>}
      </span>
      {input}
      {error && <span className="error small">{error}</span>}
    </label>
  );
}

/** The machine's commands (newest first), loaded once and kept live from the stream. */
function useCommands(id: string): { commands: Command[]; missing: boolean; add(c: Command): void } {
  const [commands, setCommands] = useState<Command[]>([]);
  const [missing, setMissing] = useState(false);
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    controlApi
      .commands(id)
      .then((r) => live && setCommands((cur) => r.commands.reduce((l, c) => applyCommand(l, c), cur)))
      .catch((e: Error) => live && e instanceof ApiError && e.status === 404 && setMissing(true));
    const offMsg = dashboard.onMessages((m) => {
      const c = asControlMessage(m);
      if (c?.type === 'command' && c.machine === id) setCommands((cur) => applyCommand(cur, c.data));
    });
    const offGap = dashboard.onGap(() => setN((x) => x + 1));
    return () => {
      live = false;
      offMsg();
      offGap();
    };
  }, [id, n]);
  return { commands, missing, add: (c) => setCommands((cur) => applyCommand(cur, c)) };
}

export function CommandsPanel({ id, control, session }: PanelProps) {
  const specs = control?.commands ?? {};
  const names = Object.keys(specs).sort();
  const { commands, add } = useCommands(id);
  const mayOperate = can(session, 'operate');
  const [open, setOpen] = useState<string>();
  if (names.length === 0 && commands.length === 0) return null;
  return (
    <section aria-labelledby="commands-h" className="commands-panel" data-testid="commands-panel">
      <h2 id="commands-h">Commands</h2>
      <div className="command-buttons" role="group" aria-label="Send a command">
        {names.map((n) => (
          <button
            key={n}
            onClick={() => setOpen(open === n ? undefined : n)}
            aria-expanded={open === n}
            disabled={!mayOperate}
            title={mayOperate ? (specs[n].description ?? `Send ${n}`) : OPERATE_HINT}
            data-command={n}
          >
            {n}
          </button>
        ))}
      </div>
      {!mayOperate && names.length > 0 && <p className="muted">Sending commands needs the operate scope.</p>}
      {open && specs[open] && (
        <CommandForm key={open} id={id} name={open} spec={specs[open]} onSent={(c) => (add(c), setOpen(undefined))} onCancel={() => setOpen(undefined)} />
      )}
      <h3>History</h3>
      <ol className="command-list" data-testid="command-history" aria-live="polite">
        {commands.map((c) => (
          <CommandItem key={c.id} c={c} />
        ))}
        {commands.length === 0 && <li className="muted">No commands yet.</li>}
      </ol>
    </section>
  );
}

function CommandForm({ id, name, spec, onSent, onCancel }: { id: string; name: string; spec: CommandSpec; onSent(c: Command): void; onCancel(): void }) {
  const fields = schemaFields(spec.params);
  const [texts, setTexts] = useState<Record<string, string>>(() =>
    Object.fromEntries(fields.map((f) => [f.name, f.required && f.kind === 'enum' ? fieldText(f, f.options?.[0]) : ''])),
  );
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [timeout, setTimeoutText] = useState('60s');
  const [confirm, setConfirm] = useState<Record<string, unknown>>();
  const [busy, setBusy] = useState(false);
  const [err, setErr] = useState<string>();
  // one key per form: a send retried after a lost answer is the same command
  const key = useRef(newIdempotencyKey());

  const review = (e: FormEvent) => {
    e.preventDefault();
    const r = parseForm(fields, texts);
    setErrors(r.errors);
    if (Object.keys(r.errors).length === 0) setConfirm(r.params);
  };
  const send = async () => {
    if (!confirm) return;
    setBusy(true);
    setErr(undefined);
    try {
      const c = await controlApi.sendCommand(id, { name, params: confirm, timeout: timeout.trim() || undefined }, key.current);
      onSent(c);
    } catch (x) {
      setErr((x as Error).message);
    } finally {
      setBusy(false);
      setConfirm(undefined);
    }
  };
  return (
    <form className="command-form" onSubmit={review} noValidate aria-label={`Command ${name}`} data-testid="command-form">
      {spec.description && <p className="muted">{spec.description}</p>}
      {fields.map((f) => (
        <FieldInput key={f.name} field={f} text={texts[f.name] ?? ''} error={errors[f.name]} onChange={(t) => setTexts({ ...texts, [f.name]: t })} />
      ))}
      <label className="field">
        <span>timeout</span>
        <input value={timeout} onChange={(e) => setTimeoutText(e.target.value)} size={6} pattern="\d+(ms|s|m|h)" title="e.g. 30s, 5m" />
      </label>
      <div className="form-actions">
        <button type="submit" className="primary">
          Send {name}…
        </button>
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
      </div>
      {err && (
        <p className="error" role="alert">
          {err}
        </p>
      )}
      {confirm && (
        <ConfirmDialog title={`Send ${name}?`} confirmLabel="Send" busy={busy} onConfirm={() => void send()} onCancel={() => setConfirm(undefined)}>
          Send <strong>{name}</strong>
          {Object.keys(confirm).length > 0 && <> with {JSON.stringify(confirm)}</>} to {id}; it expires after {timeout || '60s'} if the machine
          does not answer.
        </ConfirmDialog>
      )}
    </form>
  );
}

const STEP_ICON: Record<string, string> = {
  pending: '…',
  delivered: '→',
  accepted: '✓',
  succeeded: '✔',
  rejected: '✕',
  failed: '✕',
  expired: '⌛',
};

function CommandItem({ c }: { c: Command }) {
  return (
    <li className={`command cmd-${c.state}`} data-command-id={c.id} data-state={c.state}>
      <div className="command-head">
        <strong>{c.name}</strong>
        {c.params && Object.keys(c.params).length > 0 && <code className="small">{JSON.stringify(c.params)}</code>}
        <span className={`badge cmd-state cmd-${c.state}`} data-testid="command-state">
          <span aria-hidden="true">{STEP_ICON[c.state] ?? '•'}</span> {c.state}
        </span>
      </div>
      <ol className="command-steps muted small" aria-label="lifecycle">
        {c.history?.map((h, i) => (
          <li key={i} title={fmtTime(h.at)}>
            {h.state}
            {h.via ? ` via ${h.via}` : ''}
            {h.by ? ` by ${h.by}` : ''} · {new Date(h.at).toLocaleTimeString()}
          </li>
        ))}
      </ol>
      {(c.reason || c.result !== undefined) && (
        <div className="small">
          {c.reason && <span>{c.reason} </span>}
          {c.result !== undefined && <code>{JSON.stringify(c.result)}</code>}
        </div>
      )}
      {!isTerminal(c.state) && <div className="muted small">expires {new Date(c.expiresAt).toLocaleTimeString()}</div>}
    </li>
  );
}
