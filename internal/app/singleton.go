package app

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/twinline/twinline/internal/store/postgres"
)

// processingLock names the advisory lock the processing replicas of one
// PostgreSQL store hold (docs/decisions/0011-one-processor-per-machine.md).
const processingLock = "processing"

// claimProcessing makes sure each machine's events are processed by one
// replica of a shared PostgreSQL store, so that a window's final value and
// a metric's median on the live stream are the store's. A --role all
// replica without Kafka processes whatever its own clients send: it holds
// the processing lock exclusively, and a second one, or one beside Kafka
// processors, refuses to start. Kafka processors (--role all or processor
// with --kafka-brokers) each own whole partitions: they share the lock.
// The Store releases the lock when it closes, after the last write; a
// replica that loses it to another process stops (the lock's Run fails).
func (a *App) claimProcessing(ctx context.Context) error {
	if a.pg == nil || !a.cfg.Role.Processes() {
		return nil // an embedded store has a data directory of its own, locked
	}
	mode, kafka := postgres.LockExclusive, len(a.cfg.KafkaBrokers) > 0
	if kafka {
		mode = postgres.LockShared
	}
	host, _ := os.Hostname()
	holder := fmt.Sprintf("twinline %s host=%s pid=%d", a.cfg.Role, host, os.Getpid())
	lock, err := a.pg.TryLock(ctx, processingLock, mode, holder)
	switch {
	case errors.Is(err, postgres.ErrLockHeld) && kafka:
		return fmt.Errorf("a --role all replica without --kafka-brokers processes the events of this PostgreSQL store: "+
			"beside it, this replica would compute partial windows and medians of the same machines. "+
			"Give every replica --kafka-brokers, or stop it (%w)", err)
	case errors.Is(err, postgres.ErrLockHeld):
		return fmt.Errorf("another replica processes the events of this PostgreSQL store: two replicas would each compute "+
			"partial windows and medians of the same machines. Run a single --role all replica, or give every replica "+
			"--kafka-brokers (--role all, or gateway and processor replicas), so that each machine is processed by exactly one (%w)", err)
	case err != nil:
		return fmt.Errorf("claiming the processing of the PostgreSQL store: %w", err)
	}
	a.background = append(a.background, part{name: "releasing the processing lock", run: lock.Run})
	return nil
}
