package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDocs keeps docs/deploy.md in step with the files: every deployment
// file is described, and every TWINLINE_* name it shows is a flag of a
// twinline command or a variable of the compose files.
func TestDocs(t *testing.T) {
	b, err := os.ReadFile("../docs/deploy.md")
	if err != nil {
		t.Fatalf("reading docs/deploy.md: %v", err)
	}
	doc := string(b)

	known := map[string]bool{}
	for _, command := range commands {
		for name := range commandFlags(t, command) {
			known["TWINLINE_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_"))] = true
		}
	}
	for _, f := range yamlFiles(t, ".") {
		if isComposeFile(t, f) {
			for v := range readCompose(t, f).vars {
				known[v] = true
			}
		}
	}
	for _, name := range regexp.MustCompile(`TWINLINE_[A-Z0-9_]+`).FindAllString(doc, -1) {
		if !known[name] {
			t.Errorf("docs/deploy.md: %s is neither a flag's variable nor a compose variable", name)
		}
	}

	err = filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".go") {
			return err
		}
		if !strings.Contains(doc, "deploy/"+path) && !strings.Contains(doc, "`"+filepath.Base(path)+"`") {
			t.Errorf("docs/deploy.md does not mention deploy/%s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"Dockerfile", ".dockerignore"} {
		if !strings.Contains(doc, "`"+f+"`") {
			t.Errorf("docs/deploy.md does not mention %s", f)
		}
	}
}
