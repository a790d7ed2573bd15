# syntax=docker/dockerfile:1
#
# twinline's container image: one static binary on distroless, non-root.
#
#   docker build -t twinline .                          # with the React dashboard (node stage)
#   docker build -t twinline --build-arg WEB=none .     # without: serves the fallback page (no npm, no web/ needed)
#   docker build -t twinline --build-arg VERSION=v0.3.0 .
#
# Every role runs from this image (deploy/compose, deploy/k8s, docs/deploy.md):
#   docker run -p 8080:8080 -v twinline-data:/data twinline serve --demo
#
# The defaults below (TWINLINE_LISTEN, TWINLINE_DATA_DIR) are environment
# variables, not flags in CMD, so a `command:` that only says
# `serve --role gateway` keeps them, and TWINLINE_* set at run time still
# apply (the command line would win over them).

ARG GO_VERSION=1.26
ARG NODE_VERSION=20
# web: build the dashboard with node; none: skip it (the binary then serves
# its fallback page). BuildKit builds only the stages the image needs.
ARG WEB=web

# ---- dashboard: mirrors `make web` (npm ci, then npm run build into internal/web/dist/app)
FROM node:${NODE_VERSION}-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY web/ ./
# vite.config.ts writes to ../internal/web/dist/app, i.e. /src/internal/web/dist/app.
RUN npm run build && test -f /src/internal/web/dist/app/index.html

# ---- no dashboard (--build-arg WEB=none): an empty app directory, the binary
# serves its committed fallback page. Does not read web/ at all.
FROM golang:${GO_VERSION} AS none
RUN mkdir -p /src/internal/web/dist/app

FROM ${WEB} AS dashboard

# ---- the binary: same flags as the Makefile's build target, static (CGO off)
FROM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY cmd/ cmd/
COPY internal/ internal/
COPY --from=dashboard /src/internal/web/dist/app/ internal/web/dist/app/
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/twinline ./cmd/twinline \
 && /out/twinline version \
 && mkdir -p /out/data

# ---- runtime: distroless static, user nonroot (65532). No shell, so no
# HEALTHCHECK here (it would need curl or a shell): use the orchestrator's
# probes on /healthz and /readyz (deploy/k8s), or see docs/deploy.md.
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="twinline" \
      org.opencontainers.image.description="Real-time digital-twin telemetry for manufacturing" \
      org.opencontainers.image.source="https://github.com/twinline/twinline"
COPY --from=build /out/twinline /usr/local/bin/twinline
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENV TWINLINE_LISTEN=0.0.0.0:8080 \
    TWINLINE_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /data
# 8080: HTTP, or HTTPS with --tls-cert (API, ingest, stream, dashboard,
# /metrics); 1883: MQTT when --mqtt-listen 0.0.0.0:1883 runs the embedded
# broker; 8883: MQTTS with --mqtt-tls-listen 0.0.0.0:8883.
EXPOSE 8080 1883 8883
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/twinline"]
CMD ["serve"]
