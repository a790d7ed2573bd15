package embedded

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// PrepareDir creates the data directory path if needed and makes it
// private to the owner (0700), also when it already existed with wider
// permissions: the TSDB creates its blocks and segments later with the
// process umask, so a private root is what keeps them from other users.
// The integrator calls it on the data directory before opening anything in
// it; Open calls it on its own directory.
func PrepareDir(path string) error {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return fmt.Errorf("creating data directory: %w", err)
	}
	if err := os.Chmod(path, 0o700); err != nil {
		return fmt.Errorf("restricting data directory: %w", err)
	}
	return nil
}

// restrictTree takes the group and other permission bits off everything
// under dir, which the TSDB created with the process umask. Symbolic links
// are left alone (their target is not ours to change).
func restrictTree(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			return os.Chmod(path, perm&^0o077)
		}
		return nil
	})
}
