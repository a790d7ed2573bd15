package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "doc.json")
	for _, tt := range []struct {
		data string
		perm os.FileMode
	}{
		{`{"v":1}`, 0o600},
		{`{"v":2, "longer": true}`, 0o640},
		{``, 0o600},
	} {
		fi, err := WriteFile(path, []byte(tt.data), tt.perm)
		if err != nil {
			t.Fatalf("WriteFile: %v", err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tt.data {
			t.Errorf("content = %q, want %q", got, tt.data)
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != tt.perm {
			t.Errorf("mode = %v, want %v", st.Mode().Perm(), tt.perm)
		}
		if !os.SameFile(fi, st) || fi.Size() != st.Size() || !fi.ModTime().Equal(st.ModTime()) {
			t.Errorf("returned info %v %d %v, want the file's %v %d %v", fi.Name(), fi.Size(), fi.ModTime(), st.Name(), st.Size(), st.ModTime())
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d files, want only the document (no temporary file left)", len(entries))
	}
}
