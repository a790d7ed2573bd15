// Package exporttest reads CSV the way a user's tools do, for tests:
// Python's csv module, run as a subprocess.
package exporttest

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"testing"
)

// parse reads CSV from stdin with Python's csv module (the dialect its
// docs recommend for files: newline="" so quoted line breaks survive) and
// prints the records as JSON.
const parse = `
import csv, io, json, sys
rows = list(csv.reader(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")))
json.dump(rows, sys.stdout)
`

// PythonCSV parses body with Python's csv module and returns its records,
// header first. Without python3 the test is skipped, or fails under
// CI=true.
func PythonCSV(t testing.TB, body []byte) [][]string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3 not found (CI=true): %v", err)
		}
		t.Skipf("python3 not found: %v", err)
	}
	cmd := exec.Command(py, "-c", parse)
	cmd.Stdin = bytes.NewReader(body)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python csv module: %v: %s", err, stderr.Bytes())
	}
	var rows [][]string
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("decoding python's records: %v", err)
	}
	return rows
}
