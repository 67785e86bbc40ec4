package service

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow"
)

func TestEnvVarsListDefaults(t *testing.T) {
	cfg := WorkerConfig{MetricsAddr: ":9102", Base: Base{DBMaxConns: 10}}
	got := map[string]string{}
	for _, v := range EnvVars(&cfg) {
		if v.Help == "" {
			t.Errorf("%s has no help text", v.Name)
		}
		got[v.Name] = v.Default
	}
	for name, want := range map[string]string{
		"DATABASE_URL":    sagaflow.Default("DATABASE_URL"),
		"AMQP_URL":        sagaflow.Default("AMQP_URL"),
		"METRICS_ADDR":    ":9102",
		"DB_MAX_CONNS":    "10",
		"WORKER_PREFETCH": "1024",
		"PPROF_ADDR":      "",
	} {
		if got[name] != want {
			t.Errorf("default of %s = %q, want %q", name, got[name], want)
		}
	}
	if !strings.HasPrefix(got["DATABASE_URL"], "postgres://") {
		t.Errorf("DATABASE_URL default %q does not come from .env", got["DATABASE_URL"])
	}
	var b bytes.Buffer
	PrintHelp(&b, "payment", "the payment worker", &cfg)
	if !strings.Contains(b.String(), "METRICS_ADDR\n") || !strings.Contains(b.String(), "(default :9102)") {
		t.Errorf("help:\n%s", b.String())
	}
}

// TestREADMEListsEveryVariable keeps the README's configuration table true
// to the code: every variable a worker reads has its row.
func TestREADMEListsEveryVariable(t *testing.T) {
	missing, err := UndocumentedVars("../../README.md", &WorkerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range missing {
		t.Errorf("README.md's configuration table has no row for %s", v)
	}
}

func TestDefaultsOfDotEnvExpand(t *testing.T) {
	if got := sagaflow.Default("DATABASE_URL"); strings.Contains(got, "${") || got == "" {
		t.Errorf("DATABASE_URL default %q is not expanded", got)
	}
}
