/**
 * Twin control on the dashboard (issue 15): the pure logic the views draw
 * from — twins (desired vs reported), commands and their lifecycle, state
 * series and OEE. The JSON types are the generated ones of ./wire (the
 * OpenAPI and AsyncAPI documents, make generate); only the registry entry's
 * control part (desiredSchema, commands, oee), which the OpenAPI document
 * does not describe, is typed here.
 */
import type {
  Command,
  CommandMessage,
  OEEBucket,
  OEEReport,
  StateInterval,
  StateMessage,
  StateValue,
  Twin,
  TwinMessage,
} from './wire';

export type {
  Command,
  CommandTransition as CommandStep,
  OEEBucket as OEEFigures,
  OEEReport as OEEAnswer,
  StateInterval,
  States as StatesAnswer,
  StateValue,
  Twin,
} from './wire';

/** Metadata of a twin document: per leaf {updatedAt: Unix ms}, nested objects nest. */
export type TwinMetaNode = { updatedAt: number } | { [key: string]: TwinMetaNode };

/** The JSON Schema subset of registry entries (internal/twin/schema.go). */
export interface JsonSchema {
  type?: 'object' | 'number' | 'integer' | 'string' | 'boolean' | 'array';
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean;
  minimum?: number;
  maximum?: number;
  enum?: unknown[];
  maxLength?: number;
  items?: JsonSchema;
  /** Not part of the subset the server checks; shown when present. */
  description?: string;
}

export interface CommandSpec {
  description?: string;
  params?: JsonSchema;
}

export interface OEESpec {
  stateMetric: string;
  runningStates: string[];
  plannedStopStates?: string[];
  totalCount?: string;
  goodCount?: string;
  idealCycleSeconds?: number;
}

/** The control part of a registry entry (GET /api/v1/machines/{id}) and its latest states. */
export interface MachineControl {
  desiredSchema?: JsonSchema;
  commands?: Record<string, CommandSpec>;
  oee?: OEESpec;
  states?: Record<string, StateValue>;
}

export type CommandState = Command['state'];

export const TERMINAL_STATES: readonly CommandState[] = ['rejected', 'succeeded', 'failed', 'expired'];

/** One machine's OEE in an answer of GET /api/v1/oee. */
export type OEEMachine = OEEReport['machines'][number];

/** What the timeline draws of an interval (a live one has no durationMs yet). */
export type StateSpan = Pick<StateInterval, 'value' | 'from' | 'to'>;

/** Stream messages of issue 15 (types "twin", "command", "state"). */
export type ControlMessage = TwinMessage | CommandMessage | StateMessage;

/** The message as a control message, if it is one (the stream hands on types it does not know). */
export function asControlMessage(m: { type: string }): ControlMessage | undefined {
  if (m.type !== 'twin' && m.type !== 'command' && m.type !== 'state') return undefined;
  const x = m as Partial<ControlMessage>;
  if (typeof x.machine !== 'string' || !x.data || typeof x.data !== 'object') return undefined;
  return x as ControlMessage;
}

/**
 * The twin a stream "twin" message carries, or undefined for a deletion
 * (or a message without the documents).
 */
export function twinOfMessage(d: TwinMessage['data']): Twin | undefined {
  if (d.deleted || !d.desired || !d.reported || d.version === undefined || d.reportedVersion === undefined) return undefined;
  return {
    machine: d.machine,
    desired: d.desired,
    reported: d.reported,
    delta: d.delta ?? computeDelta(d.desired, d.reported),
    version: d.version,
    reportedVersion: d.reportedVersion,
    metadata: d.metadata ?? { desired: {}, reported: {} },
  };
}

// ---- twin documents -------------------------------------------------------

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep equality of JSON values (arrays compared whole, element by element). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => k in b && jsonEqual(a[k], b[k]));
  }
  return false;
}

/**
 * The part of desired that reported does not match, as the server computes
 * it (nested objects recursively, arrays and other values compared whole).
 */
export function computeDelta(desired: Record<string, unknown>, reported: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, d] of Object.entries(desired)) {
    const r = reported[k];
    if (isObject(d) && isObject(r)) {
      const sub = computeDelta(d, r);
      if (Object.keys(sub).length) out[k] = sub;
    } else if (!jsonEqual(d, r)) {
      out[k] = d;
    }
  }
  return out;
}

/** The leaves of a document by dotted path (arrays are leaves; an empty object is one too). */
export function leaves(doc: Record<string, unknown>, prefix = ''): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const [k, v] of Object.entries(doc)) {
    const path = prefix ? `${prefix}.${k}` : k;
    if (isObject(v) && Object.keys(v).length) for (const [p, x] of leaves(v, path)) out.set(p, x);
    else out.set(path, v);
  }
  return out;
}

/** When the leaf at path was last set, from a metadata tree; undefined when unknown. */
export function updatedAt(meta: Record<string, unknown> | undefined, path: string): number | undefined {
  let node: TwinMetaNode | undefined = meta as TwinMetaNode | undefined;
  for (const seg of path.split('.')) {
    if (!node || !isObject(node)) return undefined;
    node = (node as Record<string, TwinMetaNode>)[seg];
  }
  if (node && isObject(node) && typeof node.updatedAt === 'number') return node.updatedAt;
  return undefined;
}

export interface TwinRow {
  path: string;
  desired: unknown;
  reported: unknown;
  hasDesired: boolean;
  hasReported: boolean;
  /** In the delta: desired and not (yet) reported so. */
  pending: boolean;
  desiredAt?: number;
  reportedAt?: number;
}

/**
 * The rows of the twin panel: every leaf of desired or reported, in path
 * order, each with both values, whether it is in the delta (the server's;
 * computed here when the twin has none) and when each side last changed.
 */
export function twinRows(t: Pick<Twin, 'desired' | 'reported'> & Partial<Pick<Twin, 'delta' | 'metadata'>>): TwinRow[] {
  const desired = leaves(t.desired ?? {});
  const reported = leaves(t.reported ?? {});
  const delta = leaves(t.delta ?? computeDelta(t.desired ?? {}, t.reported ?? {}));
  const paths = [...new Set([...desired.keys(), ...reported.keys()])].sort(comparePaths);
  return paths.map((path) => ({
    path,
    desired: desired.get(path),
    reported: reported.get(path),
    hasDesired: desired.has(path),
    hasReported: reported.has(path),
    pending: delta.has(path) || [...delta.keys()].some((d) => path.startsWith(`${d}.`)),
    desiredAt: updatedAt(t.metadata?.desired, path),
    reportedAt: updatedAt(t.metadata?.reported, path),
  }));
}

const collator = new Intl.Collator('en', { numeric: true });

function comparePaths(a: string, b: string): number {
  return collator.compare(a, b);
}

/** A JSON value as the twin panel shows it. */
export function fmtValue(v: unknown): string {
  if (v === undefined) return '—';
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

/**
 * The newer of two versions of a twin (a stream message may cross an
 * answer): t unless it is older than cur on one version and not newer on
 * the other.
 */
export function newerTwin(cur: Twin | undefined, t: Twin): Twin {
  if (!cur) return t;
  const older = t.version <= cur.version && t.reportedVersion <= cur.reportedVersion;
  return older && (t.version < cur.version || t.reportedVersion < cur.reportedVersion) ? cur : t;
}

/** The If-Match header of a desired patch made against version. */
export function ifMatch(version: number): string {
  return `"${version}"`;
}

/** The desired and reported versions of an ETag `"7.12"` (W/ allowed). */
export function parseETag(etag: string | null | undefined): { version: number; reportedVersion?: number } | undefined {
  const m = /^(?:W\/)?"(\d+)(?:\.(\d+))?"$/.exec(etag?.trim() ?? '');
  if (!m) return undefined;
  return { version: Number(m[1]), reportedVersion: m[2] === undefined ? undefined : Number(m[2]) };
}

// ---- schema → form ---------------------------------------------------------

export type FieldKind = 'number' | 'integer' | 'string' | 'enum' | 'boolean' | 'json';

export interface FormField {
  name: string;
  kind: FieldKind;
  required: boolean;
  min?: number;
  max?: number;
  maxLength?: number;
  options?: unknown[];
  description?: string;
}

/**
 * The form fields of an object schema, one per property (required ones
 * first, then by name): enums become selects, numbers inputs with their
 * bounds, booleans checkboxes, anything else (objects, arrays, untyped) a
 * JSON text field.
 */
export function schemaFields(schema: JsonSchema | undefined): FormField[] {
  if (!schema?.properties) return [];
  const required = new Set(schema.required ?? []);
  return Object.entries(schema.properties)
    .map(([name, p]): FormField => {
      const f: FormField = { name, kind: fieldKind(p), required: required.has(name) };
      if (p.enum) f.options = p.enum;
      if (p.minimum !== undefined) f.min = p.minimum;
      if (p.maximum !== undefined) f.max = p.maximum;
      if (p.maxLength !== undefined) f.maxLength = p.maxLength;
      if (p.description) f.description = p.description;
      return f;
    })
    .sort((a, b) => Number(b.required) - Number(a.required) || comparePaths(a.name, b.name));
}

function fieldKind(p: JsonSchema): FieldKind {
  if (p.enum?.length) return 'enum';
  switch (p.type) {
    case 'number':
    case 'integer':
    case 'string':
    case 'boolean':
      return p.type;
    default:
      return 'json';
  }
}

/** What an input shows for a value (the inverse of parseField). */
export function fieldText(f: FormField, v: unknown): string {
  if (v === undefined || v === null) return '';
  if (f.kind === 'enum') return JSON.stringify(v);
  if (f.kind === 'json') return JSON.stringify(v);
  return String(v);
}

/**
 * Reads one field's input text into its JSON value: the value, or an error
 * (the reason, as the server would word it), or skip for an empty optional
 * field. Booleans come as "true"/"false"; enum options as their JSON.
 */
export function parseField(f: FormField, text: string): { value: unknown } | { error: string } | { skip: true } {
  const s = text.trim();
  if (s === '') return f.required ? { error: 'required' } : { skip: true };
  switch (f.kind) {
    case 'number':
    case 'integer': {
      const n = Number(s);
      if (!Number.isFinite(n)) return { error: 'must be a number' };
      if (f.kind === 'integer' && !Number.isInteger(n)) return { error: 'must be an integer' };
      if (f.min !== undefined && n < f.min) return { error: `must be ≥ ${f.min}` };
      if (f.max !== undefined && n > f.max) return { error: `must be ≤ ${f.max}` };
      return { value: n };
    }
    case 'boolean':
      return s === 'true' ? { value: true } : s === 'false' ? { value: false } : { error: 'must be true or false' };
    case 'string':
      if (f.maxLength !== undefined && [...s].length > f.maxLength) return { error: `at most ${f.maxLength} characters` };
      return { value: text };
    case 'enum':
    case 'json': {
      let v: unknown;
      try {
        v = JSON.parse(s);
      } catch {
        if (f.kind === 'enum') return { error: 'not one of the allowed values' };
        return { error: 'not valid JSON' };
      }
      if (f.kind === 'enum' && !f.options?.some((o) => jsonEqual(o, v))) return { error: 'not one of the allowed values' };
      return { value: v };
    }
  }
}

/** Reads a whole form: the params object, or the errors by field name. */
export function parseForm(
  fields: FormField[],
  texts: Record<string, string>,
): { params: Record<string, unknown>; errors: Record<string, string> } {
  const params: Record<string, unknown> = {};
  const errors: Record<string, string> = {};
  for (const f of fields) {
    const r = parseField(f, texts[f.name] ?? '');
    if ('error' in r) errors[f.name] = r.error;
    else if ('value' in r) params[f.name] = r.value;
  }
  return { params, errors };
}

/** The top-level desired fields an operator may set: the desired schema's properties of a scalar kind. */
export function editableFields(schema: JsonSchema | undefined): Map<string, FormField> {
  return new Map(schemaFields(schema).filter((f) => f.kind !== 'json').map((f) => [f.name, f]));
}

// ---- command lifecycle -----------------------------------------------------

export function isTerminal(s: CommandState): boolean {
  return TERMINAL_STATES.includes(s);
}

/** How far along a command is: its history's length, a terminal state beyond any other. */
function progress(c: Command): number {
  return (isTerminal(c.state) ? 1000 : 0) + (c.history?.length ?? 0);
}

/**
 * The command history after one update (a stream "command" message or a
 * listed command): a new command goes in, a known one is replaced unless
 * the update is older than what is shown (a replay, or a list answer that
 * crossed a stream message). Newest first, at most limit.
 */
export function applyCommand(list: readonly Command[], c: Command, limit = 50): Command[] {
  const i = list.findIndex((x) => x.id === c.id);
  let next: Command[];
  if (i >= 0) {
    const cur = list[i];
    const older = progress(c) < progress(cur) || (progress(c) === progress(cur) && c.updatedAt < cur.updatedAt);
    if (older) return list as Command[];
    next = list.slice();
    next[i] = c;
  } else {
    next = [...list, c];
  }
  next.sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : a.id < b.id ? 1 : -1));
  return next.length > limit ? next.slice(0, limit) : next;
}

/** A fresh Idempotency-Key for one command form (a retried send does not create it twice). */
export function newIdempotencyKey(rand: () => number = Math.random): string {
  if (typeof crypto !== 'undefined' && 'randomUUID' in crypto && rand === Math.random) return crypto.randomUUID();
  return Array.from({ length: 4 }, () => Math.floor(rand() * 0x1_0000_0000).toString(16).padStart(8, '0')).join('-');
}

// ---- states ----------------------------------------------------------------

export type StateClass = 'running' | 'idle' | 'down' | 'stopped' | 'planned' | 'neutral';

/** The colour class of a state value: RUNNING green, IDLE amber, DOWN red, STOPPED blue, else neutral. */
export function stateClass(value: string | undefined): StateClass {
  switch ((value ?? '').toUpperCase()) {
    case 'RUNNING':
    case 'RUN':
      return 'running';
    case 'IDLE':
      return 'idle';
    case 'DOWN':
    case 'FAULT':
    case 'ERROR':
      return 'down';
    case 'STOPPED':
    case 'STOP':
      return 'stopped';
    case 'PLANNED':
      return 'planned';
    default:
      return 'neutral';
  }
}

/** A machine's current value of the state named name (default "state"), from GET /machines' states. */
export function currentState(m: { states?: Record<string, StateValue> } | undefined, name = 'state'): string | undefined {
  return m?.states?.[name]?.value;
}

export interface Segment {
  value: string;
  from: number;
  to: number;
  /** Position and width in percent of the strip. */
  left: number;
  width: number;
  cls: StateClass;
}

/**
 * The state timeline strip: the intervals clipped to [from, to], adjacent
 * ones of the same value merged, each placed in percent of the range.
 */
export function timelineLayout(intervals: readonly StateSpan[], from: number, to: number): Segment[] {
  const span = to - from;
  if (!(span > 0)) return [];
  const out: Segment[] = [];
  const sorted = [...intervals].sort((a, b) => a.from - b.from);
  for (const iv of sorted) {
    const a = Math.max(from, iv.from);
    const b = Math.min(to, iv.to);
    if (b <= a) continue;
    const last = out.at(-1);
    if (last && last.value === iv.value && last.to >= a) {
      last.to = Math.max(last.to, b);
      last.width = ((last.to - last.from) / span) * 100;
      continue;
    }
    out.push({ value: iv.value, from: a, to: b, left: ((a - from) / span) * 100, width: ((b - a) / span) * 100, cls: stateClass(iv.value) });
  }
  return out;
}

/**
 * The intervals after a state change seen live (a stream "state" message):
 * the interval in force at ts ends there and one of the new value starts,
 * running to now; a change older than the last one is ignored (the next
 * reload shows it).
 */
export function extendIntervals(intervals: readonly StateSpan[], change: { value: string; ts: number }, now: number): StateSpan[] {
  const last = intervals.at(-1);
  if (last && change.ts < last.from) return intervals as StateSpan[];
  const out = intervals.slice(0, last ? -1 : 0);
  if (last) {
    if (last.value === change.value) {
      out.push({ ...last, to: Math.max(last.to, now) });
      return out;
    }
    if (change.ts > last.from) out.push({ ...last, to: change.ts });
  }
  out.push({ value: change.value, from: change.ts, to: Math.max(change.ts, now) });
  return out;
}

/** The last interval running to now (the live strip grows between messages). */
export function growTo(intervals: readonly StateSpan[], now: number): StateSpan[] {
  const last = intervals.at(-1);
  if (!last || last.to >= now) return intervals as StateSpan[];
  return [...intervals.slice(0, -1), { ...last, to: now }];
}

/** Milliseconds per value over the intervals, the most first. */
export function stateTotals(intervals: readonly StateSpan[]): { value: string; ms: number }[] {
  const m = new Map<string, number>();
  for (const iv of intervals) m.set(iv.value, (m.get(iv.value) ?? 0) + Math.max(0, iv.to - iv.from));
  return [...m.entries()].map(([value, ms]) => ({ value, ms })).sort((a, b) => b.ms - a.ms || (a.value < b.value ? -1 : 1));
}

// ---- OEE -------------------------------------------------------------------

export const OEE_PERIODS = {
  shift: { label: 'last shift (8 h)', ms: 8 * 3_600_000 },
  day: { label: 'last 24 h', ms: 24 * 3_600_000 },
} as const;

export type OEEPeriod = keyof typeof OEE_PERIODS;

/** A ratio as a percentage, "—" when undefined (a zero denominator). */
export function fmtPct(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  return `${(v * 100).toFixed(1)} %`;
}

/** The width of a ratio's bar in percent: clamped to [0, 100] (performance may exceed 1; the label tells). */
export function barWidth(v: number | null | undefined): number {
  if (v === null || v === undefined || !Number.isFinite(v)) return 0;
  return Math.max(0, Math.min(100, v * 100));
}

export interface OEEGroup {
  key: string;
  site: string;
  line: string;
  total: OEEBucket;
  machines: OEEMachine[];
}

/** The answer's lines with their machines, by site then line; machines by OEE, worst first. */
export function oeeLines(a: OEEReport): OEEGroup[] {
  const groups = new Map<string, OEEGroup>();
  const key = (site: string, line: string) => `${site}\u0000${line}`;
  for (const l of a.lines) groups.set(key(l.site, l.line), { key: key(l.site, l.line), site: l.site ?? '', line: l.line ?? '', total: l.total, machines: [] });
  for (const m of a.machines) {
    const k = key(m.site, m.line);
    let g = groups.get(k);
    if (!g) groups.set(k, (g = { key: k, site: m.site ?? '', line: m.line ?? '', total: m.total, machines: [] }));
    g.machines.push(m);
  }
  const rank = (v: number | null) => (v === null ? Infinity : v);
  for (const g of groups.values()) g.machines.sort((x, y) => rank(x.total.oee) - rank(y.total.oee) || collator.compare(x.machine, y.machine));
  return [...groups.values()].sort((x, y) => collator.compare(x.site, y.site) || collator.compare(x.line, y.line));
}

/** The top downtime reasons over some figures: ms per state summed, the most first, at most n. */
export function topDowntime(figs: readonly OEEBucket[], n = 5): { state: string; ms: number }[] {
  const m = new Map<string, number>();
  for (const f of figs) for (const d of f.downtime ?? []) m.set(d.state, (m.get(d.state) ?? 0) + d.ms);
  return [...m.entries()]
    .map(([state, ms]) => ({ state, ms }))
    .sort((a, b) => b.ms - a.ms || (a.state < b.state ? -1 : 1))
    .slice(0, n);
}

/** A duration as "2h 05m", "4m 10s", "12s". */
export function fmtDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
