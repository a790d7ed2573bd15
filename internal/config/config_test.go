package config

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v, want nil", err)
	}
	if got, want := Default().Listen, "127.0.0.1:8080"; got != want {
		t.Errorf("default listen = %q, want loopback %q", got, want)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := Default()
	c.Listen = "nope"
	c.Retention = time.Minute
	c.LogCapacity = 1
	c.LogLevel = "loud"
	c.LPMachineTags = nil
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() = nil, want errors")
	}
	for _, flag := range []string{"--listen", "--retention", "--log-capacity", "--log-level", "--lp-machine-tags"} {
		if !strings.Contains(err.Error(), flag) {
			t.Errorf("Validate() error %q does not name %s", err, flag)
		}
	}
}

func TestValidateCases(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		flag   string // "" means valid
	}{
		{"demo needs machines", func(c *Config) { c.Demo, c.DemoMachines = true, 0 }, "--demo-machines"},
		{"prometheus attributes", func(c *Config) { c.Prometheus.Attributes = []string{"model", "vendor_2"} }, ""},
		{"prometheus attribute not a label name", func(c *Config) { c.Prometheus.Attributes = []string{"serial-no"} }, "--prometheus-attributes"},
		{"prometheus attribute reserved", func(c *Config) { c.Prometheus.Attributes = []string{"__name"} }, "--prometheus-attributes"},
		{"prometheus attribute twinline's own", func(c *Config) { c.Prometheus.Attributes = []string{"line"} }, "--prometheus-attributes"},
		{"prometheus attribute twice", func(c *Config) { c.Prometheus.Attributes = []string{"model", "model"} }, "--prometheus-attributes"},
		{"prometheus series unbounded", func(c *Config) { c.Prometheus.MaxSeries = 0 }, ""},
		{"prometheus series negative", func(c *Config) { c.Prometheus.MaxSeries = -1 }, "--prometheus-max-series"},
		{"prometheus no samples", func(c *Config) { c.Prometheus.MaxSamples = 0 }, "--prometheus-max-samples"},
		{"prometheus no timeout", func(c *Config) { c.Prometheus.Timeout = 0 }, "--prometheus-timeout"},
		{"alertmanager URLs", func(c *Config) { c.AlertmanagerURLs = []string{"http://am:9093", "https://am2"} }, ""},
		{"alertmanager not a URL", func(c *Config) { c.AlertmanagerURLs = []string{"am:9093"} }, "--alertmanager-url"},
		{"tiny resend", func(c *Config) { c.AlertmanagerResend = time.Millisecond }, "--alertmanager-resend"},
		{"webhook", func(c *Config) {
			c.AlarmWebhook, c.AlarmWebhookSecretFile = "https://hooks.example.com/x", "/run/secret"
		}, ""},
		{"webhook not http", func(c *Config) { c.AlarmWebhook = "ftp://x" }, "--alarm-webhook"},
		{"secret without webhook", func(c *Config) { c.AlarmWebhookSecretFile = "/run/secret" }, "--alarm-webhook-secret-file"},
		{"no pending webhook changes", func(c *Config) { c.AlarmWebhookMaxPending = 0 }, "--alarm-webhook-max-pending"},
		{"external URL", func(c *Config) { c.ExternalURL = "twinline.example.com" }, "--external-url"},
		{"demo off ignores machines", func(c *Config) { c.DemoMachines = 0 }, ""},
		{"decompressed below compressed", func(c *Config) { c.MaxDecompressedBytes = c.MaxBodyBytes - 1 }, "--max-decompressed-bytes"},
		{"ooo window beyond retention", func(c *Config) { c.OutOfOrderWindow = c.Retention + time.Hour }, "--out-of-order-window"},
		{"rollup retentions", func(c *Config) { c.Retention1m, c.Retention1h = 90*24*time.Hour, 3*365*24*time.Hour }, ""},
		{"1m tier shorter than raw", func(c *Config) { c.Retention1m = c.Retention - time.Hour }, "--retention-1m"},
		{"1h tier shorter than 1m", func(c *Config) { c.Retention1m, c.Retention1h = 90*24*time.Hour, 60*24*time.Hour }, "--retention-1h"},
		{"1h tier shorter than raw", func(c *Config) { c.Retention1h = c.Retention - time.Hour }, "--retention-1h"},
		{"empty tag", func(c *Config) { c.LPMachineTags = []string{"host", " "} }, "--lp-machine-tags"},
		{"lp missing machine", func(c *Config) { c.LPMissingMachine = "ignore" }, "--lp-missing-machine"},
		{"tiny heartbeat", func(c *Config) { c.StreamHeartbeat = time.Millisecond }, "--stream-heartbeat"},
		{"ooo window within max future", func(c *Config) { c.OutOfOrderWindow, c.MaxFuture = 5*time.Minute, 10*time.Minute }, "--out-of-order-window"},
		{"wildcard listen", func(c *Config) { c.Listen = "0.0.0.0:9000" }, ""},
		{"postgres needs a URL", func(c *Config) { c.Store = "postgres" }, "--postgres-url"},
		{"unknown store", func(c *Config) { c.Store = "sqlite" }, "--store"},
		{"postgres store", func(c *Config) { c.Store, c.PostgresURL = "postgres", "postgres://db/t" }, ""},
		{"pprof on the public listener", func(c *Config) { c.Pprof = c.Listen }, "--pprof"},
		{"kafka needs postgres", func(c *Config) { c.KafkaBrokers = []string{"k:9092"} }, "--kafka-brokers"},
		{"kafka on postgres", func(c *Config) {
			c.KafkaBrokers, c.Store, c.PostgresURL = []string{"k:9092"}, "postgres", "postgres://db/t"
		}, ""},
		{"gateway needs kafka", func(c *Config) { c.Role = "gateway" }, "--role"},
		{"gateway on kafka", func(c *Config) { c.Role, c.KafkaBrokers = "gateway", []string{"k:9092"} }, ""},
		{"processor needs postgres", func(c *Config) { c.Role, c.KafkaBrokers = "processor", []string{"k:9092"} }, "--role"},
		{"processor", func(c *Config) {
			c.Role, c.KafkaBrokers, c.Store, c.PostgresURL, c.RedisURL = "processor", []string{"k:9092"}, "postgres", "postgres://db/t", "redis://r"
		}, ""},
		{"api needs postgres", func(c *Config) { c.Role = "api" }, "--role"},
		{"api needs redis", func(c *Config) { c.Role, c.Store, c.PostgresURL = "api", "postgres", "postgres://db/t" }, "--role"},
		{"api", func(c *Config) {
			c.Role, c.Store, c.PostgresURL, c.RedisURL = "api", "postgres", "postgres://db/t", "redis://r"
		}, ""},
		{"demo on api", func(c *Config) {
			c.Role, c.Store, c.PostgresURL, c.RedisURL, c.Demo = "api", "postgres", "postgres://db/t", "redis://r", true
		}, "--demo"},
		{"mqtt on api", func(c *Config) {
			c.Role, c.Store, c.PostgresURL, c.RedisURL, c.MQTTListen = "api", "postgres", "postgres://db/t", "redis://r", "127.0.0.1:1883"
		}, "--role"},
		{"pprof on the listen port, another host form", func(c *Config) { c.Listen, c.Pprof = "0.0.0.0:8080", "127.0.0.1:8080" }, "--pprof"},
		{"unknown role", func(c *Config) { c.Role = "worker" }, "--role"},
		{"short session timeout", func(c *Config) { c.KafkaSessionTimeout = time.Second }, "--kafka-session-timeout"},
		{"no linger", func(c *Config) { c.KafkaTuning.Linger = 0 }, ""},
		{"negative linger", func(c *Config) { c.KafkaTuning.Linger = -time.Millisecond }, "--kafka-linger"},
		{"tiny batches", func(c *Config) { c.KafkaTuning.BatchMaxBytes = 100 }, "--kafka-batch-max-bytes"},
		{"no such compression", func(c *Config) { c.KafkaTuning.Compression = "brotli" }, "--kafka-compression"},
		{"zstd", func(c *Config) { c.KafkaTuning.Compression = "zstd" }, ""},
		{"fetch wait too short", func(c *Config) { c.KafkaTuning.FetchMaxWait = time.Millisecond }, "--kafka-fetch-max-wait"},
		{"fetch min over max", func(c *Config) { c.KafkaTuning.FetchMinBytes = c.KafkaTuning.FetchMaxBytes + 1 }, "--kafka-fetch-min-bytes"},
		{"partition bytes over max", func(c *Config) { c.KafkaTuning.FetchMaxPartitionBytes = c.KafkaTuning.FetchMaxBytes + 1 }, "--kafka-fetch-max-partition-bytes"},
		{"no poll records", func(c *Config) { c.KafkaTuning.MaxPollRecords = 0 }, "--kafka-max-poll-records"},
		{"instance id with a space", func(c *Config) { c.KafkaInstanceID = "processor 0" }, "--kafka-instance-id"},
		{"instance id too long", func(c *Config) { c.KafkaInstanceID = strings.Repeat("p", 250) }, "--kafka-instance-id"},
		{"rate limit mode", func(c *Config) { c.RateLimit = "sometimes" }, "--rate-limit"},
		{"zero ingest rate", func(c *Config) { c.IngestRate = 0 }, "--ingest-rate"},
		{"redis without prefix", func(c *Config) { c.RedisURL, c.RedisPrefix = "redis://r", "" }, "--redis-prefix"},
		{"bad mqtt listen", func(c *Config) { c.MQTTListen = "1883" }, "--mqtt-listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.change(&c)
			err := c.Validate()
			switch {
			case tt.flag == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.flag != "" && (err == nil || !strings.Contains(err.Error(), tt.flag)):
				t.Errorf("Validate() = %v, want an error naming %s", err, tt.flag)
			}
		})
	}
}

func TestRoleParts(t *testing.T) {
	tests := []struct {
		role                        Role
		ingests, processes, queries bool
	}{
		{RoleAll, true, true, true},
		{RoleGateway, true, false, false},
		{RoleProcessor, false, true, false},
		{RoleAPI, false, false, true},
		{"worker", false, false, false},
	}
	for _, tt := range tests {
		if got := [3]bool{tt.role.Ingests(), tt.role.Processes(), tt.role.Queries()}; got != [3]bool{tt.ingests, tt.processes, tt.queries} {
			t.Errorf("%s: ingests, processes, queries = %v, want %v", tt.role, got, [3]bool{tt.ingests, tt.processes, tt.queries})
		}
	}
	var r Role
	if err := r.Set("gateway"); err != nil || r != RoleGateway {
		t.Errorf("Set(gateway) = %q, %v", r, err)
	}
}
