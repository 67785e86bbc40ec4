package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseAdminTokens(t *testing.T) {
	file := filepath.Join(t.TempDir(), "bob")
	if err := os.WriteFile(file, []byte("  bob-secret-token \nsecond line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ParseAdminTokens(" alice=alice-secret-token , bob=@" + file + ",")
	if err != nil || len(got) != 2 || got["alice"] != "alice-secret-token" || got["bob"] != "bob-secret-token" {
		t.Fatalf("ParseAdminTokens = %v, %v", got, err)
	}
	if got, err := ParseAdminTokens(""); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v, %v", got, err)
	}
	for spec, want := range map[string]string{
		"alice":                             "not name=token",
		"al ice=0123456789":                 "operator name",
		"alice=short":                       "at least 8",
		"alice=0123456789,alice=9876543210": "named twice",
		"alice=0123456789,bob=0123456789":   "same token",
		"carol=@" + file + ".missing":       "token of carol",
		"alice=0123456789,bob=@/dev/null":   "at least 8",
	} {
		if _, err := ParseAdminTokens(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseAdminTokens(%q) = %v, want an error saying %q", spec, err, want)
		}
	}
}
