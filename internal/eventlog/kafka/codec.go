package kafka

import (
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/twinline/twinline/internal/telemetry"
)

// AppendEvent appends ev to dst as one compact JSON object, the format
// ingest.DecodeJSON reads back to the same event:
//
//	{"machineId":"press-07","timestamp":1764482400000,"id":"a1","seq":7,"tags":{"line":"l1"},"metrics":{"temp":71.3}}
//
// The timestamp is epoch milliseconds; id, seq and tags appear only when
// set; metrics always go in the "metrics" object, so a metric may be named
// like a reserved field. Tags are written in key order. It fails, with
// ErrInvalidEvent, only for a non-finite metric value.
func AppendEvent(dst []byte, ev *telemetry.Event) ([]byte, error) {
	dst = append(dst, `{"machineId":`...)
	dst = appendString(dst, ev.Machine)
	dst = append(dst, `,"timestamp":`...)
	dst = strconv.AppendInt(dst, ev.Time, 10)
	if ev.ID != "" {
		dst = append(dst, `,"id":`...)
		dst = appendString(dst, ev.ID)
	}
	if ev.HasSeq {
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendUint(dst, ev.Seq, 10)
	}
	if len(ev.Tags) > 0 {
		dst = append(dst, `,"tags":{`...)
		keys := make([]string, 0, len(ev.Tags))
		for k := range ev.Tags {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendString(dst, ev.Tags[k])
		}
		dst = append(dst, '}')
	}
	dst = append(dst, `,"metrics":{`...)
	for i, m := range ev.Metrics {
		if math.IsNaN(m.Value) || math.IsInf(m.Value, 0) {
			return dst, fmt.Errorf("encoding event of %q: metric %q: %w: value %v is not finite", ev.Machine, m.Name, ErrInvalidEvent, m.Value)
		}
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, m.Name)
		dst = append(dst, ':')
		dst = strconv.AppendFloat(dst, m.Value, 'g', -1, 64)
	}
	return append(dst, "}}"...), nil
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Bytes that are not UTF-8 pass
// through unchanged (the decoder judges them as it would any body).
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
