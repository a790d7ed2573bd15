package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// bin is the twinline binary, built once by TestMain from ../cmd/twinline.
var bin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "twinline-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "creating a temporary directory:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin = filepath.Join(dir, "twinline")
	cmd := exec.Command(goTool, "build", "-o", bin, "../cmd/twinline")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building twinline:", err)
		return 1
	}
	return m.Run()
}

// flagInfo describes one flag of a twinline command, as its -h prints it.
type flagInfo struct {
	isBool bool
	def    string
}

// flagSet is the flags of one command by name.
type flagSet map[string]flagInfo

var (
	flagsMu    sync.Mutex
	flagsCache = map[string]flagSet{}
)

var (
	flagLine    = regexp.MustCompile(`^  -([A-Za-z0-9][A-Za-z0-9-]*)(?: (\S+))?$`)
	defaultText = regexp.MustCompile(`\(default (?:"([^"]*)"|([^)]*))\)$`)
)

// commandFlags returns the flags of `twinline <command>`, read from its -h
// output: the real flag set, not a copy of it.
func commandFlags(t *testing.T, command string) flagSet {
	t.Helper()
	flagsMu.Lock()
	defer flagsMu.Unlock()
	if fs, ok := flagsCache[command]; ok {
		return fs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, command, "-h")
	cmd.Env = cleanEnv(nil)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("twinline %s -h: %v\n%s", command, err, out)
	}
	fs := flagSet{}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := flagLine.FindStringSubmatch(line); m != nil {
			last = m[1]
			fs[last] = flagInfo{isBool: m[2] == ""}
			continue
		}
		if m := defaultText.FindStringSubmatch(strings.TrimSpace(line)); m != nil && last != "" {
			fi := fs[last]
			fi.def = m[1] + m[2]
			fs[last] = fi
		}
	}
	if len(fs) == 0 {
		t.Fatalf("twinline %s -h printed no flags:\n%s", command, out)
	}
	flagsCache[command] = fs
	return fs
}

// commands are the twinline commands a deployment may run, with flags.
var commands = []string{"serve", "migrate", "simulate", "bench"}

// flagOfEnv maps TWINLINE_DATA_DIR to data-dir, as the binary does.
func flagOfEnv(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "TWINLINE_")
	if !ok {
		return "", false
	}
	return strings.ReplaceAll(strings.ToLower(rest), "_", "-"), true
}

// parseArgs reads a command line (after the command name) the way package
// flag does, and reports unknown flags, missing values and positional
// arguments (which twinline refuses).
func parseArgs(fs flagSet, args []string) (map[string]string, []error) {
	vals := map[string]string{}
	var errs []error
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			if i+1 < len(args) {
				errs = append(errs, fmt.Errorf("unexpected arguments %q", args[i+1:]))
			}
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			errs = append(errs, fmt.Errorf("unexpected argument %q (twinline takes flags only)", a))
			continue
		}
		name := strings.TrimLeft(a, "-")
		name, value, hasValue := strings.Cut(name, "=")
		fi, ok := fs[name]
		if !ok {
			errs = append(errs, fmt.Errorf("unknown flag %q", a))
			continue
		}
		switch {
		case hasValue:
		case fi.isBool:
			value = "true"
		case i+1 < len(args):
			i++
			value = args[i]
		default:
			errs = append(errs, fmt.Errorf("flag %q needs a value", a))
			continue
		}
		vals[name] = value
	}
	return vals, errs
}

// workload is one twinline container as a deployment file runs it.
type workload struct {
	where string
	// args is the command line after the image's entrypoint: command, flags.
	args []string
	// env is what the file sets (ConfigMaps resolved, secrets as
	// placeholders); imageEnv what the image sets.
	env, imageEnv map[string]string
}

// settings are a workload's effective flag values: the image's
// environment, then the file's, then the command line; defaults from -h.
type settings struct {
	command string
	fs      flagSet
	vals    map[string]string
}

func (s settings) get(name string) string {
	if v, ok := s.vals[name]; ok {
		return v
	}
	return s.fs[name].def
}

// duration returns a duration flag's value, 0 (reported) when it is not a
// duration.
func (s settings) duration(t *testing.T, name string) time.Duration {
	t.Helper()
	d, err := model.ParseDuration(s.get(name))
	if err != nil {
		t.Errorf("--%s %q is not a duration: %v", name, s.get(name), err)
		return 0
	}
	return time.Duration(d)
}

// check verifies the command, its flags and every TWINLINE_* variable
// against the real binary, and returns the effective settings. A problem is
// reported with t.Errorf; ok is false when the command line is unusable.
func (w workload) check(t *testing.T) (_ settings, ok bool) {
	t.Helper()
	if len(w.args) == 0 {
		t.Errorf("%s: no command (serve, migrate, …)", w.where)
		return settings{}, false
	}
	command := w.args[0]
	if command == "version" {
		return settings{command: command}, true
	}
	if !slices.Contains(commands, command) {
		t.Errorf("%s: unknown twinline command %q", w.where, command)
		return settings{}, false
	}
	fs := commandFlags(t, command)
	vals := map[string]string{}
	// The image's defaults apply to every command; only some have the flag.
	for _, k := range sortedKeys(w.imageEnv) {
		if name, ok := flagOfEnv(k); ok {
			if _, known := fs[name]; known {
				vals[name] = w.imageEnv[k]
			}
		}
	}
	for _, k := range sortedKeys(w.env) {
		name, ok := flagOfEnv(k)
		if !ok {
			continue
		}
		if _, known := fs[name]; !known {
			t.Errorf("%s: %s is not a flag of `twinline %s` (no --%s)", w.where, k, command, name)
			continue
		}
		vals[name] = w.env[k]
	}
	argVals, errs := parseArgs(fs, w.args[1:])
	for _, err := range errs {
		t.Errorf("%s: twinline %s: %v", w.where, command, err)
	}
	for k, v := range argVals {
		vals[k] = v
	}
	return settings{command: command, fs: fs, vals: vals}, len(errs) == 0
}

// roleProblems mirrors the role rules of config.Validate: which backends
// each --role needs.
func roleProblems(s settings) []string {
	var p []string
	role, store := s.get("role"), s.get("store")
	kafka := strings.TrimSpace(s.get("kafka-brokers")) != ""
	redis := strings.TrimSpace(s.get("redis-url")) != ""
	if store == "postgres" && strings.TrimSpace(s.get("postgres-url")) == "" {
		p = append(p, "--store postgres needs --postgres-url (TWINLINE_POSTGRES_URL)")
	}
	if store != "postgres" && store != "embedded" {
		p = append(p, fmt.Sprintf("--store %q is neither embedded nor postgres", store))
	}
	switch role {
	case "all":
		if kafka && store != "postgres" {
			p = append(p, "--role all with --kafka-brokers needs --store postgres")
		}
	case "gateway":
		if !kafka {
			p = append(p, "--role gateway needs --kafka-brokers")
		}
	case "processor":
		if !kafka || store != "postgres" || !redis {
			p = append(p, "--role processor needs --kafka-brokers, --store postgres and --redis-url")
		}
	case "api":
		if store != "postgres" || !redis {
			p = append(p, "--role api needs --store postgres and --redis-url")
		}
	default:
		p = append(p, fmt.Sprintf("--role %q is not all, gateway, processor or api", role))
	}
	return p
}

// checkServe runs the shared checks of a `twinline serve` workload: the
// role rules, addresses, and the binary's own validation of the whole
// configuration.
func checkServe(t *testing.T, w workload, s settings) {
	t.Helper()
	for _, p := range roleProblems(s) {
		t.Errorf("%s: %s", w.where, p)
	}
	if host, _, err := net.SplitHostPort(s.get("listen")); err != nil {
		t.Errorf("%s: --listen %q is not host:port", w.where, s.get("listen"))
	} else if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		t.Errorf("%s: --listen %q is loopback: unreachable from outside the container", w.where, s.get("listen"))
	}
	if s.duration(t, "shutdown-timeout") <= 0 {
		t.Errorf("%s: --shutdown-timeout must be positive", w.where)
	}
	if err := validateWithBinary(w); err != nil {
		t.Errorf("%s: %v", w.where, err)
	}
}

// validateWithBinary runs `twinline serve` with the workload's command line
// and environment plus a deliberately invalid --log-level, so that the
// binary validates the whole configuration and stops before starting
// anything: the only problem it may report is that --log-level. --listen
// and --data-dir are replaced by harmless ones in case it ever started.
func validateWithBinary(w workload) error {
	args := append(slices.Clone(w.args), "--log-level", "deploy-test-invalid",
		"--listen", "127.0.0.1:0", "--data-dir", filepath.Join(os.TempDir(), "twinline-deploy-test-never-created"))
	env := map[string]string{}
	for k, v := range w.imageEnv {
		env[k] = v
	}
	for k, v := range w.env {
		env[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cleanEnv(env)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return fmt.Errorf("twinline serve did not stop at its configuration check (err %v):\n%s", err, out)
	}
	var problems []string
	sawLogLevel := false
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "--log-level:"):
			sawLogLevel = true
		case strings.HasPrefix(line, "--"), strings.HasPrefix(line, "TWINLINE_"), strings.HasPrefix(line, "twinline:") && !strings.Contains(line, "invalid configuration"):
			problems = append(problems, line)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("twinline serve rejects this configuration:\n%s", strings.Join(problems, "\n"))
	}
	if !sawLogLevel {
		return fmt.Errorf("twinline serve did not report the planted --log-level problem:\n%s", out)
	}
	return nil
}

// cleanEnv is this process's environment without any TWINLINE_* variable,
// plus env.
func cleanEnv(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TWINLINE_") {
			out = append(out, kv)
		}
	}
	for _, k := range sortedKeys(env) {
		out = append(out, k+"="+env[k])
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// yamlFiles lists the YAML files under dir, sorted.
func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(path); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listing %s: %v", dir, err)
	}
	if len(files) == 0 {
		t.Fatalf("no YAML files under %s", dir)
	}
	return files
}

// readYAML decodes every document of a YAML file.
func readYAML(t *testing.T, path string) []any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []any
	for {
		var doc any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML document", path)
	}
	return docs
}

// TestYAMLParses parses every YAML file under deploy/.
func TestYAMLParses(t *testing.T) {
	for _, f := range yamlFiles(t, ".") {
		t.Run(f, func(t *testing.T) {
			for i, doc := range readYAML(t, f) {
				if _, ok := doc.(map[string]any); !ok {
					t.Errorf("%s: document %d is a %T, not a mapping", f, i+1, doc)
				}
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	fs := flagSet{"role": {}, "demo": {isBool: true}, "listen": {}}
	tests := []struct {
		name     string
		args     []string
		want     map[string]string
		wantErrs int
	}{
		{"separate value", []string{"--role", "api"}, map[string]string{"role": "api"}, 0},
		{"equals and single dash", []string{"-role=gateway", "--demo"}, map[string]string{"role": "gateway", "demo": "true"}, 0},
		{"bool with value", []string{"--demo=false"}, map[string]string{"demo": "false"}, 0},
		{"unknown flag", []string{"--rol", "api"}, map[string]string{}, 2},
		{"missing value", []string{"--listen"}, map[string]string{}, 1},
		{"positional", []string{"--demo", "extra"}, map[string]string{"demo": "true"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, errs := parseArgs(fs, tt.args)
			if !mapsEqual(got, tt.want) {
				t.Errorf("values: got %v, want %v", got, tt.want)
			}
			if len(errs) != tt.wantErrs {
				t.Errorf("errors: got %v, want %d", errs, tt.wantErrs)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestRoleRules checks the mirror of config.Validate's role rules against
// the binary itself, so the two cannot drift apart unnoticed.
func TestRoleRules(t *testing.T) {
	pg := "postgres://u@db.invalid/twinline"
	tests := []struct {
		name string
		args []string
	}{
		{"all embedded", []string{"serve"}},
		{"all kafka embedded", []string{"serve", "--kafka-brokers", "k:9092"}},
		{"all kafka postgres", []string{"serve", "--kafka-brokers", "k:9092", "--store", "postgres", "--postgres-url", pg}},
		{"gateway", []string{"serve", "--role", "gateway", "--kafka-brokers", "k:9092"}},
		{"gateway without kafka", []string{"serve", "--role", "gateway"}},
		{"processor", []string{"serve", "--role", "processor", "--kafka-brokers", "k:9092", "--store", "postgres", "--postgres-url", pg, "--redis-url", "redis://r:6379"}},
		{"processor without redis", []string{"serve", "--role", "processor", "--kafka-brokers", "k:9092", "--store", "postgres", "--postgres-url", pg}},
		{"processor without postgres", []string{"serve", "--role", "processor", "--kafka-brokers", "k:9092"}},
		{"processor without kafka", []string{"serve", "--role", "processor", "--store", "postgres", "--postgres-url", pg}},
		{"api", []string{"serve", "--role", "api", "--store", "postgres", "--postgres-url", pg, "--redis-url", "redis://r:6379"}},
		{"api without redis", []string{"serve", "--role", "api", "--store", "postgres", "--postgres-url", pg}},
		{"api embedded", []string{"serve", "--role", "api"}},
		{"postgres without url", []string{"serve", "--store", "postgres"}},
		{"unknown role", []string{"serve", "--role", "worker"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := workload{where: tt.name, args: tt.args}
			s, ok := w.check(t)
			if !ok {
				t.Fatal("bad command line")
			}
			mirrorOK := len(roleProblems(s)) == 0
			binaryOK := validateWithBinary(w) == nil
			if mirrorOK != binaryOK {
				t.Errorf("role rules: mirror accepts %v, binary accepts %v (%v)", mirrorOK, binaryOK, roleProblems(s))
			}
		})
	}
}
