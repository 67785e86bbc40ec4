// Package deploytest checks what deploy/ ships: the Prometheus alerting
// rules (with promtool, from Debian's prometheus package) and the Grafana
// dashboard, against the metrics the binaries really serve.
package deploytest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagaflow/sagaflow/saga/sagaprom"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

func TestMain(m *testing.M) { sagatest.Main(m) }

const root = "../.."

// promtool runs promtool in dir; without it the test skips, or fails
// under CI=true (make services installs it).
func promtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool is not installed (Debian's prometheus package; make services installs it): %v", err)
		}
		t.Skipf("promtool is not installed (Debian's prometheus package; make services installs it)")
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestAlertRulesPassPromtool(t *testing.T) {
	dir := filepath.Join(root, "deploy", "prometheus")
	promtool(t, dir, "check", "rules", "alerts.yml")
	// Each alert fires on trouble and stays quiet on a healthy system.
	promtool(t, dir, "test", "rules", "alerts_test.yml")
	promtool(t, dir, "check", "config", "--syntax-only", "prometheus.yml")
}

// served lists the metric names the orchestrator and the workers serve
// (sagaflow_*), from the descriptions of their collectors.
func served(t *testing.T) []string {
	t.Helper()
	// What RegisterCoordinator, RegisterWorker, the queue collector and
	// the build info register, read from their descriptions (vectors
	// without children, and collectors of const metrics, gather nothing).
	cs := []prometheus.Collector{sagaprom.StoreCollector{}, sagaprom.NewQueueCollector(nil), sagaprom.BuildInfo("test"),
		sagaprom.SagasStarted, sagaprom.SagasFinished, sagaprom.StepDuration, sagaprom.StepRetries,
		sagaprom.Compensations, sagaprom.SagasStuck, sagaprom.BatchSize, sagaprom.BatchDuration,
		sagaprom.Quarantined, sagaprom.MessagesPublished, sagaprom.DeadLetters, sagaprom.AMQPReconnects,
		sagaprom.HTTPRequests, sagaprom.HTTPDuration, sagaprom.WorkerCommands, sagaprom.WorkerCommandDuration,
		sagaprom.SLAMissed}
	var names []string
	fq := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range cs {
			c.Describe(ch)
		}
		close(ch)
	}()
	for d := range ch {
		if m := fq.FindStringSubmatch(d.String()); m != nil {
			names = append(names, m[1])
		}
	}
	return names
}

// metricsIn returns the sagaflow_* names a PromQL expression uses, without
// a histogram's _bucket, _sum or _count.
func metricsIn(expr string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`sagaflow_[a-z_]+`).FindAllString(expr, -1) {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			m = strings.TrimSuffix(m, suffix)
		}
		out = append(out, m)
	}
	return out
}

// TestDeployNamesRealMetrics: every metric the alerts and the dashboard
// query is one the binaries serve (a renamed metric would leave an alert
// that never fires and a panel that stays empty).
func TestDeployNamesRealMetrics(t *testing.T) {
	names := served(t)
	check := func(where, expr string) {
		used := metricsIn(expr)
		if len(used) == 0 {
			t.Errorf("%s: %q queries no sagaflow metric", where, expr)
		}
		for _, m := range used {
			if !slices.Contains(names, m) {
				t.Errorf("%s: %s is not a metric sagaflow serves (it serves %v)", where, m, names)
			}
		}
	}

	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, filepath.Join(root, "deploy", "prometheus", "alerts.yml"), &rules)
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			check("alert "+r.Alert, r.Expr)
		}
	}
	// The alerts the operators' issue asked for, at least.
	for _, want := range []string{"SagaflowStuckSagas", "SagaflowOutboxBehind", "SagaflowDeadLettersGrowing",
		"SagaflowCommandQueueWithoutConsumer", "SagaflowRetryRateHigh", "SagaflowPendingBacklog"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("deploy/prometheus/alerts.yml has no %s", want)
		}
	}

	dash := loadDashboard(t)
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || p.GridPos.W == 0 || p.GridPos.H == 0 || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: a title, a size and a query are needed", p.ID, p.Title)
		}
		for _, tg := range p.Targets {
			check("panel "+p.Title, tg.Expr)
		}
	}
}

type dashboard struct {
	UID    string `json:"uid"`
	Title  string `json:"title"`
	Panels []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		GridPos struct {
			W, H int
		} `json:"gridPos"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "deploy", "grafana", "sagaflow.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("deploy/grafana/sagaflow.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("deploy/grafana/sagaflow.json: no uid, title or panels")
	}
	return d
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// compose.yaml overrides keys merged from its anchors (<<: *service).
	if err := yaml.UnmarshalWithOptions(b, v, yaml.AllowDuplicateMapKey()); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestComposeProfileProvisionsWhatShips: the observability profile mounts
// files that exist, and Grafana's provisioning points where they go.
func TestComposeProfileProvisionsWhatShips(t *testing.T) {
	var compose struct {
		Services map[string]struct {
			Profiles []string `yaml:"profiles"`
			Volumes  []string `yaml:"volumes"`
		} `yaml:"services"`
	}
	readYAML(t, filepath.Join(root, "compose.yaml"), &compose)
	for _, name := range []string{"prometheus", "grafana"} {
		svc, ok := compose.Services[name]
		if !ok || !slices.Contains(svc.Profiles, "observability") {
			t.Errorf("compose.yaml: no service %s in the profile observability", name)
			continue
		}
		for _, v := range svc.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if _, err := os.Stat(filepath.Join(root, src)); err != nil {
				t.Errorf("compose.yaml: %s mounts %s: %v", name, src, err)
			}
		}
	}
}
