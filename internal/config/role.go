package config

// Role is the part of the platform a replica runs (--role). Validate
// refuses any value but the four below; the methods say what each one does,
// so that no caller compares role names.
type Role string

// The roles.
const (
	// RoleAll runs everything in one process: ingest, processing, queries.
	RoleAll Role = "all"
	// RoleGateway takes ingest (HTTP, MQTT) and writes it to Kafka.
	RoleGateway Role = "gateway"
	// RoleProcessor consumes Kafka: engine, store, live messages.
	RoleProcessor Role = "processor"
	// RoleAPI serves queries, the registry, the live stream and the
	// dashboard.
	RoleAPI Role = "api"
)

// Ingests reports whether the role takes ingest (HTTP, MQTT, --demo):
// all and gateway.
func (r Role) Ingests() bool { return r == RoleAll || r == RoleGateway }

// Processes reports whether the role processes the event log (runs the
// engine, writes the store, raises offline alarms): all and processor.
func (r Role) Processes() bool { return r == RoleAll || r == RoleProcessor }

// Queries reports whether the role serves queries, the registry, the live
// stream and the dashboard: all and api.
func (r Role) Queries() bool { return r == RoleAll || r == RoleAPI }

// String returns the role's name, as --role takes it.
func (r Role) String() string { return string(r) }

// Set sets the role from its name, for the --role flag (a flag.Value);
// Validate refuses a name that is none of the roles, with every other
// problem of the configuration.
func (r *Role) Set(name string) error {
	*r = Role(name)
	return nil
}
