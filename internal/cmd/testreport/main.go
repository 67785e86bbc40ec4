// Command testreport reads `go test -json` on its standard input and
// prints what a person needs from a whole suite: one line per package, the
// output of every failed test (and of the tests -log names, passed or not),
// and at the end one summary line of passed, skipped and failed tests with
// the skips grouped by their reason, so that a green run with half the
// suite skipped is visible. It exits 1 when a test or a package failed
// (a build failure included), or when the input holds no test at all.
//
//	go test -json ./... | go run ./internal/cmd/testreport -log TestChaos
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Time       time.Time
	Action     string
	Package    string
	ImportPath string // build-output, build-fail
	Test       string
	Elapsed    float64
	Output     string
}

type key struct{ pkg, test string }

type report struct {
	out      io.Writer
	log      *regexp.Regexp
	output   map[key][]string // output of tests (and of packages, test "")
	passed   int
	failed   []key
	said     map[key][]string // what each failed test said, for the summary
	skipped  map[string][]key // reason -> tests
	pkgFails []string
}

func main() {
	logPattern := flag.String("log", "", "print the whole output of the tests whose name matches this regexp, even when they pass")
	flag.Parse()
	r := &report{out: os.Stdout, output: map[key][]string{}, skipped: map[string][]key{}}
	if *logPattern != "" {
		var err error
		if r.log, err = regexp.Compile(*logPattern); err != nil {
			fmt.Fprintf(os.Stderr, "testreport: -log: %v\n", err)
			os.Exit(2)
		}
	}
	os.Exit(r.read(os.Stdin))
}

func (r *report) read(in io.Reader) int {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not an event: go's own messages (a vet or build error).
			fmt.Fprintln(r.out, string(line))
			continue
		}
		r.handle(e)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(r.out, "testreport: reading the events: %v\n", err)
		return 1
	}
	return r.summary()
}

func (r *report) handle(e event) {
	k := key{e.Package, e.Test}
	switch e.Action {
	case "build-output":
		fmt.Fprint(r.out, e.Output)
	case "build-fail":
		r.pkgFails = append(r.pkgFails, e.ImportPath)
	case "output":
		r.output[k] = append(r.output[k], e.Output)
	case "pass", "fail", "skip":
		if e.Test == "" {
			r.endPackage(e)
			return
		}
		r.endTest(k, e.Action)
	}
}

func (r *report) endTest(k key, action string) {
	lines := r.output[k]
	if r.log != nil && r.log.MatchString(k.test) || action == "fail" {
		fmt.Fprintf(r.out, "=== %s %s (%s)\n%s", strings.ToUpper(action), k.test, k.pkg, strings.Join(lines, ""))
	}
	switch action {
	case "pass":
		r.passed++
	case "fail":
		r.failed = append(r.failed, k)
		if r.said == nil {
			r.said = map[key][]string{}
		}
		r.said[k] = messages(lines, 8)
	case "skip":
		reason := skipReason(lines)
		r.skipped[reason] = append(r.skipped[reason], k)
	}
	delete(r.output, k)
}

func (r *report) endPackage(e event) {
	lines := r.output[key{e.Package, ""}]
	delete(r.output, key{e.Package, ""})
	switch {
	case e.Action == "fail":
		r.pkgFails = append(r.pkgFails, e.Package)
		fmt.Fprintf(r.out, "FAIL\t%s\t%.1fs\n", e.Package, e.Elapsed)
		// Output outside any test: a panic, TestMain, a timeout.
		for _, l := range lines {
			if !strings.HasPrefix(l, "FAIL") && !strings.HasPrefix(l, "ok ") {
				fmt.Fprint(r.out, l)
			}
		}
	case e.Action == "skip":
		// No test files: not worth a line.
	default:
		fmt.Fprintf(r.out, "ok  \t%s\t%.1fs\n", e.Package, e.Elapsed)
	}
}

// messages returns the last n messages a test printed (t.Log, t.Error,
// t.Fatal: the lines that start with a file and line), each cut to one
// line of at most 300 bytes: why it failed, in the summary, at the end of
// a run whose output may be read only by its tail.
func messages(lines []string, n int) []string {
	var out []string
	for _, l := range lines {
		if fileLine.MatchString(l) {
			m := strings.TrimSpace(strings.TrimRight(l, "\n"))
			if len(m) > 300 {
				m = m[:300] + "…"
			}
			out = append(out, m)
		}
	}
	return out[max(0, len(out)-n):]
}

// fileLine is the "file_test.go:123: " prefix t.Skip puts before its reason.
var fileLine = regexp.MustCompile(`^\s*[\w./-]+\.go:\d+: `)

// skipReason is what the test said when it skipped, without the file and
// line, so that many tests skipped for one reason group together.
func skipReason(lines []string) string {
	var said []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		said = append(said, strings.TrimSpace(fileLine.ReplaceAllString(l, "")))
	}
	if len(said) == 0 {
		return "(no reason given)"
	}
	return strings.Join(said, " ")
}

func (r *report) summary() int {
	nSkipped := 0
	reasons := make([]string, 0, len(r.skipped))
	for reason, ks := range r.skipped {
		nSkipped += len(ks)
		reasons = append(reasons, reason)
	}
	sort.Slice(reasons, func(i, j int) bool { return len(r.skipped[reasons[i]]) > len(r.skipped[reasons[j]]) })
	fmt.Fprintln(r.out)
	for _, reason := range reasons {
		ks := r.skipped[reason]
		names := make([]string, 0, min(len(ks), 5))
		for _, k := range ks[:min(len(ks), 5)] {
			names = append(names, k.test)
		}
		more := ""
		if len(ks) > 5 {
			more = fmt.Sprintf(" and %d more", len(ks)-5)
		}
		fmt.Fprintf(r.out, "skipped %d: %s (%s%s)\n", len(ks), reason, strings.Join(names, ", "), more)
	}
	for _, k := range r.failed {
		fmt.Fprintf(r.out, "failed: %s (%s)\n", k.test, k.pkg)
		for _, m := range r.said[k] {
			fmt.Fprintf(r.out, "    %s\n", m)
		}
	}
	for _, p := range r.pkgFails {
		fmt.Fprintf(r.out, "failed package: %s\n", p)
	}
	verdict := "PASS"
	code := 0
	total := r.passed + nSkipped + len(r.failed)
	if len(r.failed) > 0 || len(r.pkgFails) > 0 || total == 0 {
		verdict, code = "FAIL", 1
	}
	fmt.Fprintf(r.out, "%s: %d tests: %d passed, %d skipped, %d failed; %d packages failed\n",
		verdict, total, r.passed, nSkipped, len(r.failed), len(r.pkgFails))
	return code
}
