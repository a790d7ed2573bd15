package web

import "testing"

// BenchmarkNewDocs is the startup cost of the viewer: every file
// compressed once.
func BenchmarkNewDocs(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		NewDocs()
	}
}
