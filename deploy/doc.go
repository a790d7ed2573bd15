// Package deploy holds twinline's deployment files, not code: the Docker
// Compose files in compose/ and the Kubernetes manifests in k8s/, described
// in docs/deploy.md, with the Dockerfile at the repository root; and the
// monitoring of both, described in docs/observability.md: Prometheus
// rules (SLIs and SLO alerts) and configuration in prometheus/, Grafana
// dashboards and provisioning in grafana/, Alertmanager in alertmanager/,
// the OpenTelemetry Collector in otel/. Its tests check those files
// offline against the real binary: every flag and TWINLINE_* variable
// exists, each role has the backends it needs, probes, shutdown grace,
// security settings and volumes fit the server; every rule loads with
// Prometheus' rule parser and passes its promtool unit tests, every PromQL
// expression parses.
//
// Its only code, observability.go, reads the PromQL of those files for
// the tests here and for internal/app's, which check that every metric
// the rules and dashboards read exists on a running server's /metrics,
// and for e2e's, which run the queries of the twinline datasource (the
// plant dashboard, docs/grafana.md) on twinline's own query API.
package deploy
