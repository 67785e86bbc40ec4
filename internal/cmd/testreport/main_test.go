package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

func TestReportCountsAndGroupsSkips(t *testing.T) {
	in := `{"Action":"run","Package":"a","Test":"TestOK"}
{"Action":"pass","Package":"a","Test":"TestOK","Elapsed":0.1}
{"Action":"run","Package":"a","Test":"TestDB1"}
{"Action":"output","Package":"a","Test":"TestDB1","Output":"=== RUN   TestDB1\n"}
{"Action":"output","Package":"a","Test":"TestDB1","Output":"    db_test.go:12: PostgreSQL is unreachable (dial tcp 127.0.0.1:5432: connect: connection refused)\n"}
{"Action":"output","Package":"a","Test":"TestDB1","Output":"--- SKIP: TestDB1 (0.00s)\n"}
{"Action":"skip","Package":"a","Test":"TestDB1","Elapsed":0}
{"Action":"output","Package":"a","Test":"TestDB2","Output":"    other_test.go:99: PostgreSQL is unreachable (dial tcp 127.0.0.1:5432: connect: connection refused)\n"}
{"Action":"skip","Package":"a","Test":"TestDB2","Elapsed":0}
{"Action":"output","Package":"a","Test":"TestBad","Output":"    x_test.go:3: got 1, want 2\n"}
{"Action":"output","Package":"a","Test":"TestBad","Output":"        a long log of services\n"}
{"Action":"fail","Package":"a","Test":"TestBad","Elapsed":0}
{"Action":"fail","Package":"a","Elapsed":1.5}
{"Action":"output","Package":"b","Test":"TestChaos","Output":"    chaos_test.go:1: chaos: 400 orders\n"}
{"Action":"pass","Package":"b","Test":"TestChaos","Elapsed":3}
{"Action":"pass","Package":"b","Elapsed":3}
{"ImportPath":"c","Action":"build-output","Output":"c/c.go:1:1: syntax error\n"}
{"ImportPath":"c","Action":"build-fail"}
`
	var out bytes.Buffer
	r := &report{out: &out, output: map[key][]string{}, skipped: map[string][]key{}}
	code := r.read(strings.NewReader(in))
	got := out.String()
	if code != 1 {
		t.Errorf("exit code %d, want 1 (a test and a package failed)", code)
	}
	for _, want := range []string{
		"FAIL: 5 tests: 2 passed, 2 skipped, 1 failed; 2 packages failed\n",
		"skipped 2: PostgreSQL is unreachable (dial tcp 127.0.0.1:5432: connect: connection refused) (TestDB1, TestDB2)\n",
		"=== FAIL TestBad (a)\n    x_test.go:3: got 1, want 2\n",
		"c/c.go:1:1: syntax error\n",
		"failed package: c\n",
		// The summary says why, for a reader of the tail alone.
		"failed: TestBad (a)\n    x_test.go:3: got 1, want 2\nfailed package: a\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "chaos: 400 orders") {
		t.Errorf("a passing test's log was printed without -log:\n%s", got)
	}
}

func TestReportPassesAndShowsLoggedTests(t *testing.T) {
	in := `{"Action":"output","Package":"b","Test":"TestChaos","Output":"    chaos_test.go:1: chaos: 400 orders\n"}
{"Action":"pass","Package":"b","Test":"TestChaos","Elapsed":3}
{"Action":"pass","Package":"b","Elapsed":3}
`
	var out bytes.Buffer
	r := &report{out: &out, output: map[key][]string{}, skipped: map[string][]key{}}
	r.log = regexp.MustCompile("TestChaos")
	if code := r.read(strings.NewReader(in)); code != 0 {
		t.Errorf("exit code %d, want 0:\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "chaos: 400 orders") || !strings.Contains(out.String(), "PASS: 1 tests: 1 passed, 0 skipped, 0 failed") {
		t.Errorf("report:\n%s", out.String())
	}
}

func TestReportWithoutTestsFails(t *testing.T) {
	var out bytes.Buffer
	r := &report{out: &out, output: map[key][]string{}, skipped: map[string][]key{}}
	if code := r.read(strings.NewReader("")); code != 1 {
		t.Errorf("exit code %d for no tests at all, want 1", code)
	}
}
