/**
 * The OpenTelemetry SDK part of browser tracing, loaded by ./tracing with
 * a dynamic import only when the server has tracing on: the build puts it
 * in its own chunk (served at /assets/), so it must import nothing of the
 * app but types.
 *
 * Spans are made with the explicit parent from the message's traceparent
 * (no context manager: nothing in the page runs inside a span), batched,
 * and posted as OTLP/HTTP JSON to the server's relay with the dashboard's
 * own credentials (the same-origin session cookie, and the CSRF header).
 */
import { ROOT_CONTEXT, SpanKind, trace, TraceFlags } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, TracerProvider, type SpanExporter } from '@opentelemetry/sdk-trace';
import type { ExporterConfig, Render, RenderExporter } from './tracing';

/** The dashboard's service name; the relay sets it on every span anyway. */
export const SERVICE_NAME = 'twinline-dashboard';

/**
 * Batching: at most 64 spans a request (about 40 KiB of OTLP/JSON, under
 * the relay's 64 KiB), sent within a second of the render.
 */
export const BATCH = { maxExportBatchSize: 64, scheduledDelayMillis: 1000, maxQueueSize: 1024 };

/** Makes the render exporter; `exporter` replaces the OTLP one (tests). */
export function createRenderExporter(c: ExporterConfig, exporter?: SpanExporter): RenderExporter {
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': SERVICE_NAME }),
    spanProcessors: [
      new BatchSpanProcessor({
        ...BATCH,
        exporter: exporter ?? new OTLPTraceExporter({ url: c.url, headers: async () => c.headers() }),
      }),
    ],
  });
  const tracer = provider.getTracer(SERVICE_NAME);
  return {
    record(r: Render) {
      const parent = trace.setSpanContext(ROOT_CONTEXT, {
        traceId: r.parent.traceId,
        spanId: r.parent.spanId,
        traceFlags: r.parent.flags & TraceFlags.SAMPLED,
        isRemote: true,
      });
      // 'render' is RENDER_SPAN: a value imported from ./tracing would tie
      // this chunk to the page's own.
      const span = tracer.startSpan(
        'render',
        {
          kind: SpanKind.CONSUMER,
          startTime: r.start,
          attributes: {
            'twinline.machine': r.machine,
            'twinline.stream.seq': r.seq,
            'twinline.samples': r.samples,
            'twinline.drawn': r.drawn,
          },
        },
        parent,
      );
      span.end(r.end);
    },
    flush: () => provider.forceFlush(),
  };
}
