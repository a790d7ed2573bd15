package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/twinline/twinline/internal/store"
)

// The transforms as SQL window functions over the range's samples, in time
// order: what store.Transform.Apply computes. The range is read through the
// (machine, metric, time) index of the partitions it touches.
const (
	transformDelta = `
SELECT time, delta FROM (
  SELECT time, value - lag(value) OVER w AS delta
  FROM samples
  WHERE machine = $1 AND metric = $2 AND time >= $3 AND time <= $4
  WINDOW w AS (ORDER BY time)
) d
WHERE delta IS NOT NULL
ORDER BY time LIMIT $5`
	transformRollingAvg = `
SELECT time, avg(value) OVER (ORDER BY time ROWS BETWEEN $6::int - 1 PRECEDING AND CURRENT ROW)
FROM samples
WHERE machine = $1 AND metric = $2 AND time >= $3 AND time <= $4
ORDER BY time LIMIT $5`
)

// TransformRange is store.Transform applied in SQL with window functions
// (lag for delta, a ROWS frame for rolling_avg), at most limit points.
func (s *Store) TransformRange(ctx context.Context, key store.SeriesKey, from, to int64, tr store.Transform, limit int) ([]store.Point, error) {
	if s.packed {
		return s.transformPacked(ctx, key, from, to, tr, limit)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("transforming: %w", err)
	}
	if err := s.acquire(); err != nil {
		return nil, fmt.Errorf("transforming: %w", err)
	}
	defer s.life.RUnlock()
	cfrom, cto, ok := clampRange(from, to)
	if !ok || !validName(key.Machine) || !validName(key.Metric) {
		return []store.Point{}, nil
	}
	var (
		rows pgx.Rows
		err  error
	)
	switch tr.Fn {
	case "delta":
		rows, err = s.pool.Query(ctx, transformDelta, customPlan, key.Machine, key.Metric, ts(cfrom), ts(cto), limit)
	case "rolling_avg":
		if tr.Window < 1 {
			return nil, fmt.Errorf("rolling_avg over %d samples: %w", tr.Window, store.ErrInvalidQuery)
		}
		rows, err = s.pool.Query(ctx, transformRollingAvg, customPlan, key.Machine, key.Metric, ts(cfrom), ts(cto), limit, tr.Window)
	default:
		return nil, fmt.Errorf("transform %q: %w", tr.Fn, store.ErrInvalidQuery)
	}
	if err != nil {
		return nil, fmt.Errorf("transforming %s/%s: %w", key.Machine, key.Metric, err)
	}
	pts, err := pgx.CollectRows(rows, scanPoint)
	if err != nil {
		return nil, fmt.Errorf("transforming %s/%s: %w", key.Machine, key.Metric, err)
	}
	return pts, nil
}
