package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCrashesFindsPanicsAndRaces(t *testing.T) {
	s := &System{logDir: t.TempDir()}
	write := func(name, log string) {
		if err := os.WriteFile(filepath.Join(s.logDir, name+".log"), []byte(log), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("payment", `{"level":"info","message":"worker started"}`+"\n")
	if summary, detail := s.Crashes(); summary != "" || detail != "" {
		t.Fatalf("a clean log reads as a crash: %s\n%s", summary, detail)
	}
	write("audit", `{"level":"info","message":"worker started"}
panic: runtime error: invalid memory address or nil pointer dereference

goroutine 1 [running]:
main.main()
`)
	write("shipping", "WARNING: DATA RACE\nWrite at 0x00c by goroutine 7:\n")
	summary, got := s.Crashes()
	if want := "audit: panic: runtime error: invalid memory address or nil pointer dereference; shipping: WARNING: DATA RACE"; summary != want {
		t.Errorf("summary %q, want %q", summary, want)
	}
	for _, want := range []string{"--- audit\npanic: runtime error", "main.main()", "--- shipping\nWARNING: DATA RACE"} {
		if !strings.Contains(got, want) {
			t.Errorf("Crashes() does not show %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "payment") || strings.Contains(got, "worker started") {
		t.Errorf("Crashes() shows more than the crashes:\n%s", got)
	}
}
