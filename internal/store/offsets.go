package store

import "errors"

// ErrFenced reports a write refused because the stored offset it expected
// to move is no longer the one it read: another consumer moved it (it owns
// the partition now, or did meanwhile). Nothing of the write was stored.
var ErrFenced = errors.New("stored offset moved by another consumer")

// OffsetCommit is the consumed position a store moves together with the
// samples of one write, for a consumer of a partitioned log (Kafka) that
// keeps its offsets next to the data: the samples and the offset commit
// together, or not at all.
type OffsetCommit struct {
	// Group, Topic and Partition name the stored offset.
	Group, Topic string
	Partition    int32
	// Next is the offset to store: the first record not yet consumed.
	Next int64
	// Expected is the stored offset the consumer read or wrote last (-1:
	// none stored yet). A store whose offset differs refuses the write
	// with an error wrapping ErrFenced.
	Expected int64
}
