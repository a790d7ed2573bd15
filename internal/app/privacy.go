package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/twinline/twinline/internal/alerting"
	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/twin"
)

// Erased counts what EraseAuthor changed.
type Erased struct {
	Pseudonym                  string
	Notes, AlarmEntries, Audit int
	// AlarmDeliveries are the webhook outbox's changes rewritten.
	AlarmDeliveries int
}

// EraseAuthor replaces a person's name with a random pseudonym in the
// notes, the alarm journal (acknowledgements), the alarm webhook's outbox
// and the audit log, where
// `serve` keeps them (PostgreSQL when pg is not nil, else the data
// directory), and records the erasure in the audit log under the
// pseudonym, never the name. actor is who runs it. With the files of the
// embedded store the server must be stopped (it keeps its journals open);
// PostgreSQL replicas should be restarted afterwards, as they keep names
// in memory.
func EraseAuthor(ctx context.Context, pg *postgres.Store, dataDir, name, actor string) (Erased, error) {
	if name == "" {
		return Erased{}, errors.New("the name to erase is empty")
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	out := Erased{Pseudonym: "erased-" + hex.EncodeToString(b)}
	var (
		notes  twin.NoteEraser
		alarms twin.AlarmEraser
		outbox interface {
			EraseBy(ctx context.Context, name, pseudonym string) (int, error)
		}
	)
	if pg != nil {
		notes, alarms, outbox = postgres.NewNoteStore(pg), postgres.NewAlarmLog(pg), postgres.NewAlarmOutbox(pg)
	} else {
		unlock, err := lockDataDir(dataDir)
		if err != nil {
			return Erased{}, err
		}
		defer unlock()
		nf, err := twin.OpenNoteFile(filepath.Join(dataDir, "notes.jsonl"))
		if err != nil {
			return Erased{}, err
		}
		defer nf.Close()
		af := twin.NewAlarmFile(filepath.Join(dataDir, "alarms.jsonl"))
		defer af.Close()
		notes, alarms = nf, af
		if path := filepath.Join(dataDir, "alarm-outbox.jsonl"); fileExists(path) {
			ob, err := alerting.OpenFileOutbox(path)
			if err != nil {
				return Erased{}, err
			}
			defer ob.Close()
			outbox = ob
		}
	}
	_, audit, err := OpenTokens(ctx, pg, dataDir)
	if err != nil {
		return Erased{}, err
	}
	defer audit.Close()
	if out.Notes, err = notes.EraseAuthor(ctx, name, out.Pseudonym); err != nil {
		return out, fmt.Errorf("erasing notes: %w", err)
	}
	if out.AlarmEntries, err = alarms.EraseBy(ctx, name, out.Pseudonym); err != nil {
		return out, fmt.Errorf("erasing alarm acknowledgements: %w", err)
	}
	if outbox != nil {
		if out.AlarmDeliveries, err = outbox.EraseBy(ctx, name, out.Pseudonym); err != nil {
			return out, fmt.Errorf("erasing the alarm outbox: %w", err)
		}
	}
	if out.Audit, err = audit.EraseActor(ctx, name, out.Pseudonym); err != nil {
		return out, fmt.Errorf("erasing the audit log: %w", err)
	}
	_, err = audit.Append(ctx, auth.AuditEntry{At: time.Now().UTC(), Actor: actor, ActorKind: "cli", Action: "privacy.erase",
		Target: out.Pseudonym, Outcome: "ok",
		Detail: map[string]any{"notes": out.Notes, "alarmEntries": out.AlarmEntries, "alarmDeliveries": out.AlarmDeliveries, "auditEntries": out.Audit}})
	if err != nil {
		return out, fmt.Errorf("recording the erasure in the audit log: %w", err)
	}
	return out, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// lockDataDir fails if a server has the data directory's store open: the
// files it keeps open must not be rewritten under it.
func lockDataDir(dataDir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dataDir, "tsdb", "lock"), os.O_RDWR, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, nil // no store: no server ran here
	}
	if err != nil {
		return nil, fmt.Errorf("checking that no server runs on %s: %w", dataDir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("a twinline server is running on %s: stop it first (it keeps the journals open)", dataDir)
	}
	return func() { f.Close() }, nil
}
