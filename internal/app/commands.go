package app

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/twin"
)

// openCommands builds the machines' commands on the roles that serve the
// API, or any role with PostgreSQL (shared by the replicas): their store
// (the table commands, else a journal in <data-dir>/commands), their
// expiry and replica-following loop (Run, supervised with the background
// loops) and their live stream (every transition published to the hub).
// It returns nil on the other roles.
func (a *App) openCommands(registry *twin.Registry) (*control.Commands, error) {
	if !a.cfg.Role.Queries() && a.pg == nil {
		return nil, nil
	}
	var s control.CommandStore
	if a.pg != nil {
		s = postgres.NewCommandStore(a.pg)
	} else {
		fs, err := control.OpenFileCommandStore(filepath.Join(a.cfg.DataDir, "commands"))
		if err != nil {
			return nil, fmt.Errorf("opening commands: %w", err)
		}
		s = fs
	}
	a.cmdStore = s
	a.cleanup = append(a.cleanup, func() { s.Close() })
	specs := func(machine string) map[string]twin.CommandSpec {
		in, err := registry.Get(machine)
		if err != nil {
			return nil
		}
		return in.Commands
	}
	cmds := control.NewCommands(s, specs, time.Now, a.logger)
	cmds.Subscribe(func(c control.Command) { a.hub.PublishCommand(c.Machine, c) })
	a.background = append(a.background, part{name: "stopping the command expiry", run: cmds.Run})
	return cmds, nil
}
