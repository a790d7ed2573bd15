// Package deploy holds twinline's deployment files, not code: the Docker
// Compose files in compose/ and the Kubernetes manifests in k8s/, described
// in docs/deploy.md, with the Dockerfile at the repository root. Its tests
// check those files offline against the real binary: every flag and
// TWINLINE_* variable exists, each role has the backends it needs, probes,
// shutdown grace, security settings and volumes fit the server.
package deploy
