import { useEffect, useRef } from 'react';
import { minMaxDownsample } from '../lib/downsample';
import type { MachineFeed } from '../lib/feed';
import type { Range } from '../lib/route';
import { dashboard } from '../lib/store';
import { fromPlotX, toPlotX } from '../lib/time';

type PlotlyT = typeof import('plotly.js-basic-dist-min').default;

let plotlyModule: Promise<PlotlyT> | undefined;

/**
 * Plotly (about 1 MB of the page's 1.5 MB) is its own chunk, served at
 * /assets/ (vite.config.ts: manualChunks) and fetched the first time a
 * chart mounts: the fleet, alarms and OEE views never load it. A failed
 * fetch is retried by the next chart that mounts.
 */
export function loadPlotly(): Promise<PlotlyT> {
  plotlyModule ??= import('plotly.js-basic-dist-min').then(
    (m) => m.default,
    (err: unknown) => {
      plotlyModule = undefined;
      throw err;
    },
  );
  return plotlyModule;
}

/** The shortest interval between two redraws of a live chart. */
export const MIN_LIVE_REDRAW_MS = 250;

const COLORS = ['#3b82f6', '#f59e0b', '#10b981', '#a855f7', '#ef4444', '#06b6d4'];

interface Props {
  feed: MachineFeed;
  metrics: string[];
  range: Range;
  onZoom(from: number, to: number): void;
  onLive(): void;
}

export function Chart({ feed, metrics, range, onZoom, onLive }: Props) {
  const ref = useRef<HTMLDivElement>(null);
  const props = useRef({ metrics, range, onZoom, onLive });
  props.current = { metrics, range, onZoom, onLive };

  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    let plotly: PlotlyT | undefined;
    let visible = true;
    let disposed = false;
    let drawnVersion = -1;
    let lastLiveDraw = 0;
    let programmatic = false;
    let wake: ReturnType<typeof setTimeout> | undefined;

    const draw = (now: number) => {
      if (disposed || !plotly) return;
      if (!visible || document.hidden) return; // resumes via the observers below
      const { metrics, range } = props.current;
      const wall = Date.now();
      const live = range.kind === 'live';
      const width = Math.max(100, el.clientWidth - 80);
      if (feed.version === drawnVersion && !live) return;
      if (live) {
        // A Plotly redraw costs tens of ms, so a live chart redraws at most
        // every pixel's worth of time, clamped to 250 ms…1 s; new data and
        // the sliding window wait for the next slot (the latency badge
        // counts that wait).
        const every = Math.min(1000, Math.max(MIN_LIVE_REDRAW_MS, range.spanMs / width));
        if (now - lastLiveDraw < every) {
          wake = wake ?? setTimeout(() => ((wake = undefined), request()), every - (now - lastLiveDraw));
          return;
        }
        if (feed.version === drawnVersion && now - lastLiveDraw < every * 2) return;
      }
      drawnVersion = feed.version;
      lastLiveDraw = now;
      const from = live ? wall - range.spanMs : range.from;
      const to = live ? wall : range.to;
      if (live) feed.trim(from - 10_000, width);
      const { data, layout } = figure(feed, metrics, from, to, width);
      programmatic = true;
      void plotly
        .react(el, data, layout, {
          displaylogo: false,
          responsive: true,
          modeBarButtonsToRemove: ['lasso2d', 'select2d', 'autoScale2d'],
        })
        .then(attach);
      programmatic = false;
      let lastTs = 0;
      for (const m of metrics) lastTs = Math.max(lastTs, feed.raw.get(m)?.last()?.t ?? 0);
      el.dataset.lastTs = String(lastTs);
      el.dataset.draws = String(Number(el.dataset.draws ?? 0) + 1);
      // sensor → screen: the samples that arrived are on screen now
      const shown = Date.now();
      for (const ts of feed.arrivedTs) dashboard.latency.arrived(ts);
      feed.arrivedTs.length = 0;
      dashboard.latency.drawn(shown);
    };

    let attached = false;
    // Plotly adds .on() to the element with the first plot
    const attach = () => {
      if (attached) return;
      const host = el as HTMLElement & { on?: (ev: string, fn: (e: Record<string, unknown>) => void) => void };
      if (!host.on) return;
      host.on('plotly_relayout', (e) => {
        if (programmatic) return;
        const a = e['xaxis.range[0]'] ?? (Array.isArray(e['xaxis.range']) ? (e['xaxis.range'] as unknown[])[0] : undefined);
        const b = e['xaxis.range[1]'] ?? (Array.isArray(e['xaxis.range']) ? (e['xaxis.range'] as unknown[])[1] : undefined);
        if (a !== undefined && b !== undefined) {
          const from = fromPlotX(a as string | number);
          const to = fromPlotX(b as string | number);
          if (to > from) props.current.onZoom(from, to);
        } else if (e['xaxis.autorange']) {
          props.current.onLive();
        }
      });
      attached = true;
    };
    const request = () => dashboard.loop.request(draw);
    const unsubFeed = feed.listen(request);
    const io = new IntersectionObserver((entries) => {
      visible = entries.some((e) => e.isIntersecting);
      if (visible) request();
    });
    io.observe(el);
    const onVis = () => !document.hidden && request();
    document.addEventListener('visibilitychange', onVis);
    const onTheme = () => feed.changed();
    window.addEventListener('twinline-theme', onTheme);
    // the live window slides even without new samples
    const slide = setInterval(() => props.current.range.kind === 'live' && request(), 500);

    loadPlotly().then(
      (p) => {
        if (disposed) return;
        plotly = p;
        request();
      },
      (err: unknown) => {
        if (disposed) return;
        el.dataset.error = 'plotly';
        el.textContent = `The chart library did not load (${(err as Error).message}); reload the page to retry.`;
      },
    );

    return () => {
      disposed = true;
      unsubFeed();
      io.disconnect();
      document.removeEventListener('visibilitychange', onVis);
      window.removeEventListener('twinline-theme', onTheme);
      clearInterval(slide);
      clearTimeout(wake);
      dashboard.loop.cancel(draw);
      if (plotly) plotly.purge(el);
    };
  }, [feed]);

  useEffect(() => {
    // a new range or metric set: redraw at once
    feed.changed();
  }, [feed, metrics.join(','), range.kind === 'live' ? range.label : `${range.from}~${range.to}`]);

  return (
    <div
      ref={ref}
      className="chart"
      data-testid="chart"
      style={{ height: Math.max(260, 150 * metrics.length) }}
      aria-label={`Chart of ${metrics.join(', ')}`}
      role="img"
    />
  );
}

function cssVar(name: string, fallback: string): string {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

/** Builds the Plotly figure: one stacked panel per metric on a shared time axis. */
export function figure(feed: MachineFeed, metrics: string[], from: number, to: number, width: number) {
  const fg = cssVar('--fg', '#1d2330');
  const grid = cssVar('--grid', '#e4e6ee');
  const n = Math.max(1, metrics.length);
  const gap = 0.04;
  const h = (1 - gap * (n - 1)) / n;
  const data: object[] = [];
  const shapes: object[] = [];
  const layout: Record<string, unknown> = {
    margin: { l: 60, r: 20, t: 10, b: 30 },
    paper_bgcolor: 'rgba(0,0,0,0)',
    plot_bgcolor: 'rgba(0,0,0,0)',
    font: { color: fg, size: 11 },
    showlegend: false,
    hovermode: 'x',
    dragmode: 'zoom',
    xaxis: { type: 'date', range: [toPlotX(from), toPlotX(to)], gridcolor: grid, anchor: `y${n === 1 ? '' : n}` },
    shapes,
    uirevision: 'keep',
  };
  metrics.forEach((metric, i) => {
    const ax = i === 0 ? '' : String(i + 1);
    const yref = `y${ax}`;
    const color = COLORS[i % COLORS.length];
    const top = 1 - i * (h + gap);
    layout[`yaxis${ax}`] = {
      domain: [Math.max(0, top - h), top],
      title: { text: metric, font: { size: 11 } },
      gridcolor: grid,
      fixedrange: true,
      zeroline: false,
    };
    // 10 s window bands (min–max)
    const bands = [...(feed.bands.get(metric)?.values() ?? [])]
      .filter((b) => b.start + b.size >= from && b.start <= to)
      .sort((a, b) => a.start - b.start);
    if (bands.length) {
      const bx: number[] = [];
      const lo: number[] = [];
      const hi: number[] = [];
      for (const b of bands) {
        bx.push(toPlotX(b.start), toPlotX(b.start + b.size));
        lo.push(b.min, b.min);
        hi.push(b.max, b.max);
      }
      data.push({ x: bx, y: lo, yaxis: yref, type: 'scatter', mode: 'lines', line: { width: 0 }, hoverinfo: 'skip', name: `${metric} min` });
      data.push({
        x: bx,
        y: hi,
        yaxis: yref,
        type: 'scatter',
        mode: 'lines',
        line: { width: 0 },
        fill: 'tonexty',
        fillcolor: hexA(color, 0.15),
        hoverinfo: 'skip',
        name: `${metric} 10 s min–max`,
      });
    }
    // samples, downsampled to the chart width
    const r = feed.raw.get(metric);
    const cols = r ? r.range(from, to) : { t: [], v: [] };
    const d = minMaxDownsample(cols.t, cols.v, Math.max(2, Math.round(width)), from, to);
    data.push({
      x: d.t.map(toPlotX),
      y: d.v,
      yaxis: yref,
      type: 'scatter',
      mode: 'lines',
      line: { color, width: 1.5 },
      name: metric,
    });
    // the engine's sliding median
    const mr = feed.median.get(metric);
    if (mr && mr.length) {
      const m = mr.range(from, to);
      data.push({
        x: m.t.map(toPlotX),
        y: m.v,
        yaxis: yref,
        type: 'scatter',
        mode: 'lines',
        line: { color: fg, width: 1, dash: 'dash' },
        name: `${metric} median`,
      });
    }
    // thresholds
    const th = feed.machine?.thresholds?.[metric];
    for (const [k, v] of [
      ['high', th?.high],
      ['low', th?.low],
    ] as const) {
      if (v === undefined) continue;
      shapes.push({
        type: 'line',
        xref: 'paper',
        x0: 0,
        x1: 1,
        yref,
        y0: v,
        y1: v,
        line: { color: '#ef4444', width: 1, dash: 'dot' },
        name: `${metric} ${k}`,
      });
    }
    // alarm markers
    const alarms = feed.alarms.filter((a) => a.metric === metric);
    if (alarms.length) {
      const ax2: number[] = [];
      const ay: number[] = [];
      const txt: string[] = [];
      for (const a of alarms) {
        const t = Date.parse(a.raisedAt);
        if (t < from || t > to || a.value === undefined) continue;
        ax2.push(toPlotX(t));
        ay.push(a.value);
        txt.push(`alarm ${a.kind} ${a.limit ?? ''} (${a.state}${a.acknowledged ? ', ack' : ''})`);
      }
      data.push({
        x: ax2,
        y: ay,
        yaxis: yref,
        type: 'scatter',
        mode: 'markers',
        marker: { symbol: 'x', size: 10, color: '#ef4444' },
        text: txt,
        hoverinfo: 'text',
        name: 'alarms',
      });
    }
  });
  // note markers, along the top of the first panel
  const notes = feed.notes.filter((nt) => {
    const t = Date.parse(nt.time);
    return t >= from && t <= to;
  });
  for (const nt of notes) {
    const x = toPlotX(Date.parse(nt.time));
    shapes.push({ type: 'line', xref: 'x', x0: x, x1: x, yref: 'paper', y0: 0, y1: 1, line: { color: '#a855f7', width: 1, dash: 'dot' } });
  }
  if (notes.length) {
    layout.annotations = notes.map((nt) => ({
      x: toPlotX(Date.parse(nt.time)),
      y: 1,
      xref: 'x',
      yref: 'paper',
      text: '✎',
      hovertext: `${nt.author}: ${nt.text}`,
      showarrow: false,
      font: { color: '#a855f7', size: 14 },
    }));
  }
  return { data, layout };
}

function hexA(hex: string, a: number): string {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}
