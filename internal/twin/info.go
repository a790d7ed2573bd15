package twin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/twinline/twinline/internal/atomicfile"
)

const (
	maxTextLen        = 256
	maxAttributeBytes = 16 << 10
	maxThresholds     = 256
)

// DecodeInfo decodes a registry entry strictly: unknown fields are errors.
func DecodeInfo(b []byte) (Info, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var in struct {
		Info
		// Read-only fields a client may echo back from a GET.
		Status   json.RawMessage `json:"status"`
		LastSeen json.RawMessage `json:"lastSeen"`
		Metrics  json.RawMessage `json:"metrics"`
	}
	if err := dec.Decode(&in); err != nil {
		return Info{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return Info{}, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	return in.Info, nil
}

func (in Info) validate() error {
	var errs []error
	for name, v := range map[string]string{"name": in.Name, "site": in.Site, "line": in.Line} {
		if len(v) > maxTextLen {
			errs = append(errs, fmt.Errorf("%s: longer than %d bytes", name, maxTextLen))
		}
		if p := textProblem(v); p != "" {
			errs = append(errs, fmt.Errorf("%s: %s", name, p))
		}
	}
	if len(in.Thresholds) > maxThresholds {
		errs = append(errs, fmt.Errorf("thresholds: more than %d metrics", maxThresholds))
	}
	for metric, th := range in.Thresholds {
		field := "thresholds." + metric
		if metric == "" {
			errs = append(errs, errors.New("thresholds: empty metric name"))
		}
		if p := textProblem(metric); p != "" {
			errs = append(errs, fmt.Errorf("thresholds: metric name %s", p))
		}
		if th.High == nil && th.Low == nil {
			errs = append(errs, fmt.Errorf("%s: needs high or low", field))
		}
		for _, v := range []*float64{th.High, th.Low} {
			if v != nil && (math.IsNaN(*v) || math.IsInf(*v, 0)) {
				errs = append(errs, fmt.Errorf("%s: limits must be finite", field))
			}
		}
		if th.High != nil && th.Low != nil && *th.Low >= *th.High {
			errs = append(errs, fmt.Errorf("%s: low (%g) must be below high (%g)", field, *th.Low, *th.High))
		}
		if th.Deadband < 0 {
			errs = append(errs, fmt.Errorf("%s.deadband: must not be negative", field))
		}
		if th.For != "" {
			if d, err := time.ParseDuration(th.For); err != nil || d < 0 {
				errs = append(errs, fmt.Errorf("%s.for: %q is not a duration like \"10s\"", field, th.For))
			}
		}
	}
	if len(in.Attributes) > 0 {
		b, err := json.Marshal(in.Attributes)
		switch {
		case err != nil || len(b) > maxAttributeBytes:
			errs = append(errs, fmt.Errorf("attributes: larger than %d bytes", maxAttributeBytes))
		case bytes.Contains(b, []byte(`\u0000`)):
			errs = append(errs, errors.New("attributes: must not contain a NUL byte"))
		}
	}
	errs = append(errs, in.checkControl()...)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// registryFile persists the registry as one JSON document, replaced
// atomically (write, fsync, rename, fsync the directory).
type registryFile struct {
	path string
}

type registryDoc struct {
	Version  int    `json:"version"`
	Machines []Info `json:"machines"`
}

func (r *registryFile) load() ([]Info, error) {
	b, err := os.ReadFile(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading registry: %w", err)
	}
	var doc registryDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("decoding registry %s: %w", r.path, err)
	}
	return doc.Machines, nil
}

func (r *registryFile) save(infos []Info) error {
	b, err := json.MarshalIndent(registryDoc{Version: 1, Machines: infos}, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding registry: %w", err)
	}
	if _, err := atomicfile.WriteFile(r.path, b, 0o600); err != nil {
		return fmt.Errorf("saving registry: %w", err)
	}
	return nil
}
