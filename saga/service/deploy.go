package service

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

// Exit codes of check-deploy besides 0 (every live saga can be driven)
// and 1 (the check could not run).
const (
	ExitMigrationsPending = 3
	ExitStranded          = 4
)

// RunCheckDeploy carries out check-deploy: it reads the live sagas of
// defs in the database and prints the ones defs could not drive (or that
// there are none), and returns the exit code: 0 none, 4 some, 3 when the
// store's migrations are pending (apply them first: they are additive,
// and the running release works beside them), 1 on an error.
func RunCheckDeploy(ctx context.Context, w io.Writer, b *Base, schema string, defs []*saga.Definition) int {
	ctx, cancel := context.WithTimeout(ctx, b.StartTimeout+time.Minute)
	defer cancel()
	for _, d := range defs {
		if err := d.Validate(); err != nil {
			fmt.Fprintf(w, "check-deploy: %v\n", err)
			return 1
		}
	}
	pool, err := openPool(ctx, b, schema)
	if err != nil {
		fmt.Fprintf(w, "check-deploy: %v\n", err)
		return 1
	}
	defer pool.Close()
	st, err := pgmigrate.Check(ctx, pool, pgstore.Migrations)
	if err != nil {
		fmt.Fprintf(w, "check-deploy: %v\n", err)
		return 1
	}
	if pgmigrate.Pending(st) {
		fmt.Fprintf(w, "check-deploy: the saga store's migrations are pending (%s); apply them first (\"migrate\")\n",
			strings.Join(st[0].Pending, ", "))
		return ExitMigrationsPending
	}
	ps, err := pgstore.New(pool, pgstore.Config{}).Positions(ctx, saga.ServedVersions(defs))
	if err != nil {
		fmt.Fprintf(w, "check-deploy: %v\n", err)
		return 1
	}
	stranded := saga.CheckDeploy(defs, ps)
	for _, d := range defs {
		fmt.Fprintf(w, "%s version %d: drives versions %s%s\n", d.Name, d.Version, ints(d.Served()), upgrades(d))
	}
	if len(stranded) == 0 {
		fmt.Fprintf(w, "every live saga can be driven (%d sagas of other versions, to be upgraded)\n", count(ps))
		return 0
	}
	fmt.Fprintf(w, "%s\n", strandedSummary(stranded))
	for _, s := range stranded {
		fmt.Fprintf(w, "  %s\n", describeStranded(s))
	}
	return ExitStranded
}

func count(ps []saga.Position) int {
	n := 0
	for _, p := range ps {
		n += p.Count
	}
	return n
}

func ints(vs []int) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = fmt.Sprint(v)
	}
	return strings.Join(s, ", ")
}

func upgrades(d *saga.Definition) string {
	var from []int
	for _, u := range d.Upgrades {
		if u.Keep == nil {
			from = append(from, u.From)
		}
	}
	if len(from) == 0 {
		return ""
	}
	return "; upgrades versions " + ints(from)
}

func strandedSummary(ss []saga.Stranded) string {
	n := 0
	for _, s := range ss {
		n += s.Count
	}
	return fmt.Sprintf("%d live sagas cannot be driven by these definitions:", n)
}

// describeStranded says where a group of stranded sagas stands, how many
// and since when, and why.
func describeStranded(s saga.Stranded) string {
	where := string(s.Phase)
	if s.Phase == saga.Stuck {
		where += " (in " + string(s.StuckIn) + ")"
	}
	if s.State != string(s.Phase) {
		where += " in state " + s.State
	}
	if s.At != "" {
		where += " at " + s.At
	}
	return fmt.Sprintf("%s version %d, %s: %d sagas, the oldest created %s: %s",
		s.Definition, s.Version, where, s.Count, s.Oldest.Format(time.RFC3339), s.Why)
}
