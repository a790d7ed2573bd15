package deploy_test

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line    int
	keyword string // upper case
	rest    string
}

// image is what the Dockerfile says about the final image.
type image struct {
	globalArgs   map[string]string
	stages       [][]instruction // each starts with its FROM
	env          map[string]string
	entrypoint   []string
	cmd          []string
	volumes      []string
	exposed      []string
	user         string
	instructions []instruction
}

func (im image) final() []instruction { return im.stages[len(im.stages)-1] }

// readDockerfile parses the repository's Dockerfile: enough of the syntax
// for the checks here (instructions, exec-form arrays, ENV key=value).
func readDockerfile(t *testing.T) image {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatalf("opening the Dockerfile: %v", err)
	}
	defer f.Close()
	var ins []instruction
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if body, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(line)
		kw, rest, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		ins = append(ins, instruction{line: start, keyword: strings.ToUpper(kw), rest: strings.TrimSpace(rest)})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading the Dockerfile: %v", err)
	}
	im := image{globalArgs: map[string]string{}, env: map[string]string{}, instructions: ins}
	for _, in := range ins {
		if in.keyword == "FROM" {
			im.stages = append(im.stages, []instruction{in})
			continue
		}
		if len(im.stages) == 0 {
			if in.keyword == "ARG" {
				k, v, _ := strings.Cut(in.rest, "=")
				im.globalArgs[k] = v
			}
			continue
		}
		last := len(im.stages) - 1
		im.stages[last] = append(im.stages[last], in)
	}
	if len(im.stages) == 0 {
		t.Fatal("the Dockerfile has no FROM")
	}
	for _, in := range im.final()[1:] {
		switch in.keyword {
		case "ENV":
			for _, kv := range strings.Fields(in.rest) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					t.Fatalf("Dockerfile:%d: use ENV key=value, got %q", in.line, in.rest)
				}
				im.env[k] = strings.Trim(v, `"`)
			}
		case "ENTRYPOINT":
			im.entrypoint = execForm(t, in)
		case "CMD":
			im.cmd = execForm(t, in)
		case "VOLUME":
			im.volumes = append(im.volumes, execForm(t, in)...)
		case "EXPOSE":
			im.exposed = append(im.exposed, strings.Fields(in.rest)...)
		case "USER":
			im.user = in.rest
		}
	}
	return im
}

func execForm(t *testing.T, in instruction) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(in.rest), &v); err != nil {
		t.Fatalf("Dockerfile:%d: %s must be in exec form (a JSON array): %v", in.line, in.keyword, err)
	}
	return v
}

// expand substitutes ${NAME} by the global ARG defaults.
func (im image) expand(s string) string {
	return os.Expand(s, func(k string) string { return im.globalArgs[k] })
}

// stageFrom returns the stage whose FROM image starts with prefix.
func (im image) stageFrom(prefix string) ([]instruction, bool) {
	for _, st := range im.stages {
		if strings.HasPrefix(im.expand(st[0].rest), prefix) {
			return st, true
		}
	}
	return nil, false
}

// stageRunning returns the first stage with a RUN containing s.
func (im image) stageRunning(s string) ([]instruction, bool) {
	for _, st := range im.stages {
		if strings.Contains(runText(st), s) {
			return st, true
		}
	}
	return nil, false
}

func runText(stage []instruction) string {
	var b strings.Builder
	for _, in := range stage {
		if in.keyword == "RUN" {
			b.WriteString(in.rest + "\n")
		}
	}
	return b.String()
}

// makefileRecipe returns the commands of a Makefile target, as written.
func makefileRecipe(t *testing.T, target string) []string {
	t.Helper()
	b, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatalf("reading the Makefile: %v", err)
	}
	var out []string
	in := false
	for line := range strings.Lines(string(b)) {
		line = strings.TrimRight(line, "\n")
		if strings.HasPrefix(line, target+":") {
			in = true
			continue
		}
		if in {
			if !strings.HasPrefix(line, "\t") {
				break
			}
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

func TestDockerfile(t *testing.T) {
	im := readDockerfile(t)

	t.Run("go version", func(t *testing.T) {
		mod, err := os.ReadFile("../go.mod")
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
		if m == nil {
			t.Fatal("go.mod has no go directive")
		}
		want := string(m[1])
		st, ok := im.stageRunning("go build")
		if !ok || !strings.HasPrefix(im.expand(st[0].rest), "golang:") {
			t.Fatal("no stage FROM golang:… runs go build")
		}
		from := im.expand(st[0].rest)
		tag, _, _ := strings.Cut(strings.TrimPrefix(from, "golang:"), " ")
		if got := strings.SplitN(tag, "-", 2)[0]; got != want && !strings.HasPrefix(got, want+".") {
			t.Errorf("builder FROM %s: got Go %s, want go.mod's %s", from, got, want)
		}
	})

	t.Run("binary built like the Makefile", func(t *testing.T) {
		st, ok := im.stageRunning("go build")
		if !ok {
			t.Fatal("no stage runs go build")
		}
		run := runText(st)
		if !strings.Contains(run, "go build -trimpath") || !strings.Contains(run, "./cmd/twinline") {
			t.Errorf("the build stage does not run `go build -trimpath … ./cmd/twinline`:\n%s", run)
		}
		ldflags := ""
		for _, line := range readLines(t, "../Makefile") {
			if v, ok := strings.CutPrefix(line, "LDFLAGS"); ok {
				_, ldflags, _ = strings.Cut(v, ":=")
				ldflags = strings.TrimSpace(strings.ReplaceAll(ldflags, "$(VERSION)", ""))
			}
		}
		if ldflags == "" {
			t.Fatal("no LDFLAGS in the Makefile")
		}
		if !strings.Contains(run, ldflags) {
			t.Errorf("the build stage's ldflags differ from the Makefile's %q:\n%s", ldflags, run)
		}
		env := ""
		for _, in := range st {
			if in.keyword == "ENV" || in.keyword == "ARG" {
				env += in.rest + " "
			}
		}
		if !strings.Contains(env+run, "CGO_ENABLED=0") {
			t.Error("the build stage does not set CGO_ENABLED=0: the distroless static image needs a static binary")
		}
	})

	t.Run("dashboard built like make web", func(t *testing.T) {
		if _, err := os.Stat("../web/package.json"); err != nil {
			t.Skip("no web/package.json: nothing to build")
		}
		st, ok := im.stageFrom("node:")
		if !ok {
			t.Fatal("web/package.json exists but no stage FROM node:…")
		}
		run := runText(st)
		var recipe []string
		recipe = append(recipe, makefileRecipe(t, "$(WEB_DEPS)")...)
		recipe = append(recipe, makefileRecipe(t, "$(WEB_OUT)")...)
		for _, cmd := range recipe {
			npm, ok := strings.CutPrefix(cmd, "cd web && ")
			if !ok || !strings.HasPrefix(npm, "npm ") {
				continue
			}
			if !strings.Contains(run, npm) {
				t.Errorf("the Makefile runs %q, the node stage does not:\n%s", npm, run)
			}
		}
		if !slices.ContainsFunc(im.instructions, func(in instruction) bool {
			return in.keyword == "COPY" && strings.Contains(in.rest, "--from=") && strings.Contains(in.rest, "internal/web/dist/app")
		}) {
			t.Error("no COPY --from=… of internal/web/dist/app (where vite.config.ts writes the dashboard) into the build stage")
		}
	})

	t.Run("runtime image", func(t *testing.T) {
		from := im.expand(im.final()[0].rest)
		distroless := strings.Contains(from, "distroless")
		if !distroless && !strings.HasPrefix(from, "alpine") {
			t.Errorf("final stage FROM %s: want distroless/static or alpine", from)
		}
		if u := strings.Split(im.user, ":")[0]; u == "" || u == "root" || u == "0" {
			t.Errorf("USER %q: the image must run as a non-root user", im.user)
		}
		if len(im.entrypoint) != 1 || path.Base(im.entrypoint[0]) != "twinline" {
			t.Errorf("ENTRYPOINT %q: want the twinline binary alone", im.entrypoint)
		}
		if len(im.cmd) == 0 || im.cmd[0] != "serve" {
			t.Errorf("CMD %q: want serve", im.cmd)
		}
		for _, port := range []string{"8080", "1883"} {
			if !slices.ContainsFunc(im.exposed, func(p string) bool { return strings.TrimSuffix(p, "/tcp") == port }) {
				t.Errorf("EXPOSE %v: missing %s", im.exposed, port)
			}
		}
		if dir := im.env["TWINLINE_DATA_DIR"]; dir == "" || !slices.Contains(im.volumes, dir) {
			t.Errorf("TWINLINE_DATA_DIR %q must be set and be a VOLUME (%v)", dir, im.volumes)
		}
		if _, port, err := net.SplitHostPort(im.env["TWINLINE_LISTEN"]); err != nil || port != "8080" {
			t.Errorf("TWINLINE_LISTEN %q: want 0.0.0.0:8080", im.env["TWINLINE_LISTEN"])
		}
		for _, in := range im.final() {
			if in.keyword == "HEALTHCHECK" && distroless && !strings.HasPrefix(in.rest, "NONE") {
				t.Errorf("Dockerfile:%d: HEALTHCHECK on distroless: there is no shell or curl to run it", in.line)
			}
		}
		// The image's own default command is a valid configuration.
		w := workload{where: "Dockerfile CMD", args: im.cmd, imageEnv: im.env}
		if s, ok := w.check(t); ok && s.command == "serve" {
			checkServe(t, w, s)
		}
		for k := range im.env {
			if name, ok := flagOfEnv(k); ok {
				if _, known := commandFlags(t, "serve")[name]; !known {
					t.Errorf("ENV %s: no --%s in twinline serve", k, name)
				}
			}
		}
	})

	t.Run("dockerignore", func(t *testing.T) {
		lines := readLines(t, "../.dockerignore")
		for _, want := range []string{"*", "!go.mod", "!go.sum", "!cmd/", "!internal/", "!web/", "web/node_modules/", "internal/web/dist/app/"} {
			if !slices.Contains(lines, want) {
				t.Errorf(".dockerignore: missing %q", want)
			}
		}
		// Everything the build stage copies must be let in.
		for _, in := range im.instructions {
			if in.keyword != "COPY" || strings.Contains(in.rest, "--from=") {
				continue
			}
			fields := strings.Fields(in.rest)
			for _, src := range fields[:len(fields)-1] {
				if strings.HasPrefix(src, "--") {
					continue
				}
				top := strings.SplitN(strings.TrimPrefix(src, "./"), "/", 2)[0]
				if !slices.Contains(lines, "!"+top) && !slices.Contains(lines, "!"+top+"/") {
					t.Errorf("Dockerfile:%d: COPY %s, but .dockerignore does not let %s in", in.line, src, top)
				}
			}
		}
	})
}

// readLines returns a file's lines, trimmed, without blanks and comments.
func readLines(t *testing.T, name string) []string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("reading %s: %v", name, err)
	}
	var out []string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out
}
