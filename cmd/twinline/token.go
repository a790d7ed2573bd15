package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/twinline/twinline/internal/api"
	"github.com/twinline/twinline/internal/app"
	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/store/postgres"
)

const tokenUsage = `Usage:
  twinline token create --name NAME --scopes ingest,read,operate,admin [--sites lyon,paris] [--expires 90d]
  twinline token list [--json]
  twinline token revoke NAME

Each works against the data directory (--data-dir) or PostgreSQL
(--postgres-url), also while the server runs: it notices within seconds.
create prints the token's secret on its last line: it is shown once.
`

// storeFlags are the flags saying where tokens, notes and the audit log
// live, as for serve.
func storeFlags(fs *flag.FlagSet, cfg *config.Config) {
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "`directory` of the server (embedded store)")
	fs.StringVar(&cfg.PostgresURL, "postgres-url", cfg.PostgresURL, "PostgreSQL connection `URL` of a server run with --store postgres")
	fs.StringVar(&cfg.LogLevel, "log-level", "warn", "debug, info, warn or error")
}

// openStores opens PostgreSQL when --postgres-url is given (nil otherwise)
// and the token and audit stores.
func openStores(ctx context.Context, cfg config.Config, stderr io.Writer) (*postgres.Store, auth.TokenStore, auth.AuditStore, error) {
	var pg *postgres.Store
	if cfg.PostgresURL != "" {
		var err error
		if pg, err = postgres.Open(ctx, cfg.PostgresURL, postgres.Options{}, newLogger(stderr, cfg.LogLevel), nil); err != nil {
			return nil, nil, nil, err
		}
	}
	tokens, audit, err := app.OpenTokens(ctx, pg, cfg.DataDir)
	if err != nil && pg != nil {
		pg.Close()
	}
	return pg, tokens, audit, err
}

// cliActor names who runs a command, for the audit log.
func cliActor() string {
	if u, err := user.Current(); err == nil {
		return "cli:" + u.Username
	}
	return "cli"
}

func token(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, tokenUsage)
		if len(args) == 0 {
			return errors.New("missing token command")
		}
		return nil
	}
	cfg := config.Default()
	var (
		name, scopes, sites, expires string
		asJSON                       bool
	)
	fs := flag.NewFlagSet("twinline token "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	storeFlags(fs, &cfg)
	switch args[0] {
	case "create":
		fs.StringVar(&name, "name", "", "token `name`: 1–64 letters, digits, '.', '_' or '-'")
		fs.StringVar(&scopes, "scopes", "", "comma-separated scopes: ingest, read, operate, admin")
		fs.StringVar(&sites, "sites", "", "comma-separated sites the token is limited to (empty: every site)")
		fs.StringVar(&expires, "expires", "", "expiry: a duration (90d, 12h) or an RFC 3339 time (empty: never)")
	case "list":
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	case "revoke":
	default:
		fmt.Fprint(stderr, tokenUsage)
		return fmt.Errorf("unknown token command %q", args[0])
	}
	rest := args[1:]
	if args[0] == "revoke" && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		name, rest = rest[0], rest[1:]
	}
	if err := parse(fs, rest); err != nil {
		return err
	}
	if args[0] == "revoke" && name == "" {
		return errors.New("usage: twinline token revoke NAME")
	}
	pg, tokens, audit, err := openStores(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	if pg != nil {
		defer pg.Close()
	}
	defer tokens.Close()
	defer audit.Close()
	authn, err := auth.NewAuthenticator(tokens, auth.AuthenticatorOptions{Logger: newLogger(stderr, cfg.LogLevel)})
	if err != nil {
		return fmt.Errorf("loading tokens: %w", err)
	}
	record := func(action, target string, detail map[string]any) error {
		_, err := audit.Append(ctx, auth.AuditEntry{At: time.Now().UTC(), Actor: cliActor(), ActorKind: "cli",
			Action: action, Target: target, Outcome: "ok", Detail: detail})
		return err
	}
	switch args[0] {
	case "create":
		sc, err := auth.ParseScopes(scopes)
		if err != nil {
			return fmt.Errorf("--scopes: %w", err)
		}
		var exp time.Time
		if expires != "" {
			if exp, err = api.ParseExpiry(expires, time.Now()); err != nil {
				return fmt.Errorf("--expires: %w", err)
			}
		}
		var siteList []string
		listValue{&siteList}.Set(sites)
		t, secret, err := authn.Create(ctx, name, sc, siteList, exp, cliActor())
		if err != nil {
			return err
		}
		if err := record("token.create", t.Name, map[string]any{"scopes": t.Scopes.Names(), "sites": t.Sites}); err != nil {
			return fmt.Errorf("recording in the audit log: %w", err)
		}
		fmt.Fprintf(stderr, "created token %q (scopes %s", t.Name, t.Scopes)
		if len(t.Sites) > 0 {
			fmt.Fprintf(stderr, ", sites %s", strings.Join(t.Sites, ","))
		}
		if !t.Expires.IsZero() {
			fmt.Fprintf(stderr, ", expires %s", t.Expires.UTC().Format(time.RFC3339))
		}
		fmt.Fprintln(stderr, "). Its secret, shown only now:")
		fmt.Fprintln(stdout, secret)
		return nil
	case "list":
		var list []auth.Token
		for _, t := range authn.List() {
			if !t.Session() {
				list = append(list, t)
			}
		}
		if asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(list)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSCOPES\tSITES\tCREATED\tEXPIRES\tLAST USED\tREVOKED")
		ts := func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.UTC().Format(time.RFC3339)
		}
		for _, t := range list {
			s := strings.Join(t.Sites, ",")
			if s == "" {
				s = "*"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Scopes, s, ts(t.Created), ts(t.Expires), ts(t.LastUsed), ts(t.Revoked))
		}
		return tw.Flush()
	default: // revoke
		if err := authn.Revoke(ctx, name); err != nil {
			return err
		}
		if err := record("token.revoke", name, nil); err != nil {
			return fmt.Errorf("recording in the audit log: %w", err)
		}
		fmt.Fprintf(stdout, "revoked token %q: refused by every server within seconds\n", name)
		return nil
	}
}

func privacy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "erase" {
		fmt.Fprintln(stderr, "Usage: twinline privacy erase --author NAME [--data-dir DIR | --postgres-url URL]")
		return errors.New("missing or unknown privacy command")
	}
	cfg := config.Default()
	var author string
	fs := flag.NewFlagSet("twinline privacy erase", flag.ContinueOnError)
	fs.SetOutput(stderr)
	storeFlags(fs, &cfg)
	fs.StringVar(&author, "author", "", "the person's `name` as it stands in notes, alarm acknowledgements and the audit log")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if strings.TrimSpace(author) == "" {
		return errors.New("--author is required")
	}
	pg, tokens, audit, err := openStores(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	tokens.Close()
	audit.Close()
	if pg != nil {
		defer pg.Close()
	}
	out, err := app.EraseAuthor(ctx, pg, cfg.DataDir, author, cliActor())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "replaced the name with %s in %d notes, %d alarm journal entries, %d alarm webhook deliveries and %d audit entries; the erasure is in the audit log\n",
		out.Pseudonym, out.Notes, out.AlarmEntries, out.AlarmDeliveries, out.Audit)
	if pg != nil {
		fmt.Fprintln(stdout, "restart the replicas: they keep recent notes and alarms in memory")
	}
	return nil
}
