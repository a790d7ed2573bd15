package postgres

import (
	"context"
	"fmt"
)

// ReplaySpool sends the spooled batches to the database, oldest first,
// through the ON CONFLICT path (a batch committed just before the outage was
// noticed is not stored twice), and returns how many rows it replayed. It
// stops at the first batch the database cannot take because it is
// unreachable. Run calls it; tests and tools may too.
func (s *Store) ReplaySpool(ctx context.Context) (int, error) {
	if err := s.acquire(); err != nil {
		return 0, fmt.Errorf("replaying spool: %w", err)
	}
	defer s.life.RUnlock()
	return s.replaySpool(ctx, -1)
}

// replaySpool replays at most maxFiles files (all when negative).
func (s *Store) replaySpool(ctx context.Context, maxFiles int) (int, error) {
	if s.spool == nil {
		return 0, nil
	}
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	replayed := 0
	for files := 0; maxFiles < 0 || files < maxFiles; files++ {
		seq, rows, ok, err := s.spool.oldest()
		if !ok {
			return replayed, nil
		}
		if err != nil {
			// Cannot happen short of disk corruption: keep the file for an
			// operator, go on with the others.
			s.logger.Error("spool file unreadable, moved aside", "seq", seq, "err", err)
			if err := s.spool.remove(seq, true); err != nil {
				return replayed, fmt.Errorf("replaying spool: %w", err)
			}
			continue
		}
		// Rows retention has passed since they were spooled are gone
		// anyway: their partitions were dropped.
		lo, _ := s.bounds()
		kept := rows[:0]
		for _, r := range rows {
			if r.ms >= lo {
				kept = append(kept, r)
			}
		}
		if dropped := len(rows) - len(kept); dropped > 0 {
			s.logger.Warn("spooled samples older than retention dropped", "seq", seq, "samples", dropped)
		}
		wctx, cancel := context.WithTimeout(ctx, s.opts.WriteTimeout)
		err = s.writeTx(wctx, kept, nil, true, nil)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return replayed, fmt.Errorf("replaying spool: %w", ctx.Err())
			}
			if isUnavailable(err) {
				s.setUnreachable(err)
				return replayed, fmt.Errorf("replaying spool: %w: %w", ErrUnavailable, err)
			}
			s.logger.Error("database refused spooled batch, moved aside", "seq", seq, "samples", len(kept), "err", err)
			if err := s.spool.remove(seq, true); err != nil {
				return replayed, fmt.Errorf("replaying spool: %w", err)
			}
			continue
		}
		s.setReachable()
		if err := s.spool.remove(seq, false); err != nil {
			return replayed, fmt.Errorf("replaying spool: %w", err)
		}
		s.metrics.replayedRows.Add(float64(len(kept)))
		replayed += len(kept)
	}
	return replayed, nil
}
