package deploy_test

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dockerStopTimeout is how long Docker waits after SIGTERM by default.
const dockerStopTimeout = 10 * time.Second

var interpolation = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}`)

// interpolate resolves ${VAR}, ${VAR:-default} and the other forms the way
// docker compose does when VAR is unset, in place, and records the names.
func interpolate(v any, vars map[string]bool) any {
	switch x := v.(type) {
	case string:
		return interpolation.ReplaceAllStringFunc(x, func(m string) string {
			if m == "$$" {
				return "$"
			}
			sm := interpolation.FindStringSubmatch(m)
			vars[sm[1]] = true
			switch sm[2] {
			case ":-", "-":
				return sm[3]
			case ":?", "?":
				return "required-" + sm[1]
			}
			return ""
		})
	case map[string]any:
		for k, e := range x {
			x[k] = interpolate(e, vars)
		}
	case []any:
		for i, e := range x {
			x[i] = interpolate(e, vars)
		}
	}
	return v
}

// composeFile is one docker-compose file, interpolated.
type composeFile struct {
	path     string
	services map[string]map[string]any
	vars     map[string]bool
}

func readCompose(t *testing.T, path string) composeFile {
	t.Helper()
	docs := readYAML(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: %d YAML documents, want 1", path, len(docs))
	}
	vars := map[string]bool{}
	root, _ := interpolate(docs[0], vars).(map[string]any)
	raw, ok := root["services"].(map[string]any)
	if !ok || len(raw) == 0 {
		t.Fatalf("%s: no services", path)
	}
	cf := composeFile{path: path, services: map[string]map[string]any{}, vars: vars}
	for name, v := range raw {
		svc, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s: service %s is a %T", path, name, v)
		}
		cf.services[name] = svc
	}
	return cf
}

// isComposeFile tells a compose file from the other YAML under deploy/.
func isComposeFile(t *testing.T, path string) bool {
	docs := readYAML(t, path)
	m, _ := docs[0].(map[string]any)
	_, ok := m["services"]
	return ok && strings.Contains(filepath.Base(path), "compose")
}

func strList(v any) []string {
	switch x := v.(type) {
	case string:
		return strings.Fields(x)
	case []any:
		out := make([]string, len(x))
		for i, e := range x {
			out[i] = fmt.Sprint(e)
		}
		return out
	}
	return nil
}

func composeEnv(t *testing.T, where string, v any) map[string]string {
	env := map[string]string{}
	switch x := v.(type) {
	case nil:
	case map[string]any:
		for k, e := range x {
			if e != nil {
				env[k] = fmt.Sprint(e)
			} else {
				env[k] = ""
			}
		}
	case []any:
		for _, e := range x {
			k, val, _ := strings.Cut(fmt.Sprint(e), "=")
			env[k] = val
		}
	default:
		t.Errorf("%s: environment is a %T", where, v)
	}
	return env
}

// composeMount is one entry of a service's volumes.
type composeMount struct {
	source, target string
	named          bool
}

func composeMounts(svc map[string]any) []composeMount {
	var out []composeMount
	for _, v := range asSlice(svc["volumes"]) {
		switch x := v.(type) {
		case string:
			parts := strings.Split(x, ":")
			if len(parts) == 1 {
				out = append(out, composeMount{target: parts[0]})
				continue
			}
			src := parts[0]
			out = append(out, composeMount{source: src, target: parts[1], named: !strings.HasPrefix(src, "/") && !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "~")})
		case map[string]any:
			typ, _ := x["type"].(string)
			src, _ := x["source"].(string)
			dst, _ := x["target"].(string)
			out = append(out, composeMount{source: src, target: dst, named: typ == "volume" && src != ""})
		}
	}
	for _, v := range asSlice(svc["tmpfs"]) {
		out = append(out, composeMount{target: fmt.Sprint(v)})
	}
	return out
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

func composeReplicas(t *testing.T, where string, svc map[string]any) int {
	deploy, _ := svc["deploy"].(map[string]any)
	v, ok := deploy["replicas"]
	if !ok {
		v, ok = svc["scale"]
	}
	if !ok {
		return 1
	}
	n, err := strconv.Atoi(fmt.Sprint(v))
	if err != nil {
		t.Errorf("%s: replicas %v: %v", where, v, err)
		return 1
	}
	return n
}

func dependsOn(svc map[string]any) map[string]string {
	out := map[string]string{}
	switch x := svc["depends_on"].(type) {
	case []any:
		for _, e := range x {
			out[fmt.Sprint(e)] = "service_started"
		}
	case map[string]any:
		for k, e := range x {
			cond := "service_started"
			if m, ok := e.(map[string]any); ok {
				if c, ok := m["condition"].(string); ok {
					cond = c
				}
			}
			out[k] = cond
		}
	}
	return out
}

// flagValue returns the value after flag in a command line, if any.
func flagValue(args []string, flag string) (string, bool) {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v, true
		}
	}
	return "", false
}

// TestCompose checks every docker-compose file under deploy/ against the
// binary and the Dockerfile: commands, flags, TWINLINE_* variables, role
// rules, stop grace above the shutdown timeout, volumes (one per processor,
// persistent where the role keeps state), processors ≤ Kafka partitions.
func TestCompose(t *testing.T) {
	im := readDockerfile(t)
	var files []string
	for _, f := range yamlFiles(t, ".") {
		if isComposeFile(t, f) {
			files = append(files, f)
		}
	}
	if len(files) < 2 {
		t.Fatalf("compose files %v: want the single-node and the scale-out one", files)
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) { checkCompose(t, readCompose(t, f), im) })
	}
}

func checkCompose(t *testing.T, cf composeFile, im image) {
	type served struct {
		name     string
		s        settings
		replicas int
	}
	var serves []served
	dataVolumes := map[string]string{} // named volume → service
	migrators := map[string]bool{}
	clientIDs := map[string]string{} // MQTT client id → service
	partitions, topic := -1, ""
	for _, name := range sortedKeys(cf.services) {
		svc := cf.services[name]
		where := fmt.Sprintf("%s: service %s", cf.path, name)
		cmd := strList(svc["command"])
		if n, ok := flagValue(cmd, "--partitions"); ok {
			p, err := strconv.Atoi(n)
			if err != nil {
				t.Errorf("%s: --partitions %q: %v", where, n, err)
			}
			partitions = p
			topic, _ = flagValue(cmd, "--topic")
		}
		imageName, _ := svc["image"].(string)
		if id, ok := composeEnv(t, where, svc["environment"])["CLUSTER_ID"]; ok && strings.Contains(imageName, "kafka") {
			// kafka-storage.sh format refuses anything but a base64url UUID.
			if b, err := base64.RawURLEncoding.DecodeString(id); err != nil || len(b) != 16 {
				t.Errorf("%s: CLUSTER_ID %q is not a KRaft cluster id (16 bytes, base64url, 22 characters)", where, id)
			}
		}
		_, hasBuild := svc["build"]
		if !strings.Contains(imageName, "twinline") && !hasBuild {
			continue
		}
		if ep := strList(svc["entrypoint"]); ep != nil && !slices.Equal(ep, im.entrypoint) {
			t.Errorf("%s: entrypoint %q replaces the image's %q", where, ep, im.entrypoint)
		}
		if _, ok := svc["env_file"]; ok {
			t.Errorf("%s: env_file hides TWINLINE_* settings from this test: use environment", where)
		}
		if len(cmd) == 0 {
			cmd = im.cmd
		}
		w := workload{where: where, args: cmd, env: composeEnv(t, where, svc["environment"]), imageEnv: im.env}
		s, ok := w.check(t)
		if !ok {
			continue
		}
		replicas := composeReplicas(t, where, svc)
		switch s.command {
		case "migrate":
			migrators[name] = true
			if strings.TrimSpace(s.get("postgres-url")) == "" {
				t.Errorf("%s: twinline migrate without --postgres-url", where)
			}
			if r, _ := svc["restart"].(string); r != "no" && r != "on-failure" {
				t.Errorf("%s: a one-shot migrate needs restart \"no\" or \"on-failure\", got %q", where, r)
			}
		case "simulate":
			if u, err := url.Parse(s.get("target")); err != nil || cf.services[u.Hostname()] == nil {
				t.Errorf("%s: --target %q is not a service of this file", where, s.get("target"))
			}
		case "serve":
			checkServe(t, w, s)
			serves = append(serves, served{name, s, replicas})
			grace := dockerStopTimeout
			if g, ok := svc["stop_grace_period"]; ok {
				d, err := time.ParseDuration(fmt.Sprint(g))
				if err != nil {
					t.Errorf("%s: stop_grace_period %v: %v", where, g, err)
				}
				grace = d
			}
			if shutdown := s.duration(t, "shutdown-timeout"); grace <= shutdown {
				t.Errorf("%s: stop_grace_period %s must exceed --shutdown-timeout %s, or Docker kills the drain", where, grace, shutdown)
			}
			checkComposeData(t, where, svc, s, replicas, im, dataVolumes, name)
			checkComposeMQTT(t, where, svc, s, replicas, clientIDs)
			checkComposePorts(t, where, svc, s)
		}
	}

	processors := 0
	for _, sv := range serves {
		where := fmt.Sprintf("%s: service %s", cf.path, sv.name)
		if sv.s.get("role") == "processor" || (sv.s.get("role") == "all" && sv.s.get("kafka-brokers") != "") {
			processors += sv.replicas
		}
		if sv.s.get("store") == "postgres" && len(migrators) > 0 {
			deps := dependsOn(cf.services[sv.name])
			if !slices.ContainsFunc(sortedKeys(migrators), func(m string) bool { return deps[m] == "service_completed_successfully" }) {
				t.Errorf("%s: uses PostgreSQL but does not wait for %v (condition service_completed_successfully)", where, sortedKeys(migrators))
			}
		}
		if sv.s.get("kafka-brokers") != "" && partitions > 0 && topic != sv.s.get("kafka-topic") {
			t.Errorf("%s: --kafka-topic %q, but the topic created is %q", where, sv.s.get("kafka-topic"), topic)
		}
	}
	if processors > 0 {
		switch {
		case partitions < 0:
			t.Errorf("%s: %d processors, but no service creates the topic with --partitions", cf.path, processors)
		case processors > partitions:
			t.Errorf("%s: %d processors for %d partitions: the extra ones would idle", cf.path, processors, partitions)
		}
	}
}

// checkComposeData checks the data directory: writable under read_only,
// on a named volume of its own where the role keeps durable state (the
// embedded store, or a processor's PostgreSQL outage spool).
func checkComposeData(t *testing.T, where string, svc map[string]any, s settings, replicas int, im image, dataVolumes map[string]string, name string) {
	dataDir := s.get("data-dir")
	var data *composeMount
	for _, m := range composeMounts(svc) {
		if m.target == dataDir {
			data = &m
		}
	}
	if ro, _ := svc["read_only"].(bool); ro && data == nil && !slices.Contains(im.volumes, dataDir) {
		t.Errorf("%s: read_only, and --data-dir %s is neither mounted nor a VOLUME of the image", where, dataDir)
	}
	durable := s.get("role") == "processor" || s.get("role") == "all"
	if !durable {
		return
	}
	if data == nil || !data.named {
		t.Errorf("%s: role %s keeps durable state in --data-dir %s: mount a named volume there", where, s.get("role"), dataDir)
		return
	}
	if replicas != 1 {
		t.Errorf("%s: %d replicas share the volume %s: one volume per process (add services instead)", where, replicas, data.source)
	}
	if other, ok := dataVolumes[data.source]; ok {
		t.Errorf("%s: volume %s is already the data directory of %s: one volume per process", where, data.source, other)
	}
	dataVolumes[data.source] = name
}

// checkComposePorts checks that published container ports are ones twinline
// listens on (HTTP, MQTT, MQTTS, pprof).
func checkComposePorts(t *testing.T, where string, svc map[string]any, s settings) {
	listening := map[string]bool{}
	for _, flag := range []string{"listen", "mqtt-listen", "mqtt-tls-listen", "pprof"} {
		if _, port, err := net.SplitHostPort(s.get(flag)); err == nil {
			listening[port] = true
		}
	}
	for _, p := range asSlice(svc["ports"]) {
		spec := strings.TrimSuffix(fmt.Sprint(p), "/tcp")
		parts := strings.Split(spec, ":")
		port := parts[len(parts)-1]
		if !listening[port] {
			t.Errorf("%s: publishes container port %s, where twinline does not listen (%v)", where, port, sortedKeys(listening))
		}
	}
}

// checkComposeMQTT: a subscriber to an external broker has a persistent
// session keyed on its client id (twinline-{hostname} unless ?client_id=),
// so the id must be stable across re-creations and unique: one replica with
// a fixed hostname or client_id.
func checkComposeMQTT(t *testing.T, where string, svc map[string]any, s settings, replicas int, clientIDs map[string]string) {
	broker := s.get("mqtt-broker")
	if broker == "" {
		return
	}
	u, err := url.Parse(broker)
	if err != nil {
		t.Errorf("%s: --mqtt-broker %q: %v", where, broker, err)
		return
	}
	id := u.Query().Get("client_id")
	if hostname, _ := svc["hostname"].(string); id == "" && hostname != "" {
		id = "twinline-" + hostname
	}
	if id == "" || replicas != 1 {
		t.Errorf("%s: --mqtt-broker needs a stable, unique client id: one replica with a fixed hostname (or ?client_id=), got %d replicas, client id %q", where, replicas, id)
		return
	}
	if other, ok := clientIDs[id]; ok {
		t.Errorf("%s: MQTT client id %s is also %s's", where, id, other)
	}
	clientIDs[id] = where
}
