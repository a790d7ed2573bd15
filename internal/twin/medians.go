package twin

// ApplyMedians records the sliding medians another replica computed for
// the machines it processes (with Kafka, each machine's partition is
// processed by one replica; the others hear its live messages): this
// replica's twins then show the owner's medians, as its own would be. A
// median for a machine or metric without a latest value here is ignored:
// the owner publishes a sample before any median covering it.
func (t *Twins) ApplyMedians(us []MedianUpdate) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, u := range us {
		e := t.machines[u.Machine]
		if e == nil {
			continue
		}
		v, ok := e.latest[u.Metric]
		if !ok {
			continue
		}
		v.median, v.hasMedian = u.Median, true
		e.latest[u.Metric] = v
	}
}
