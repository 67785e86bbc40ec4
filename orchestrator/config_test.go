package main

import (
	"testing"

	"github.com/sagaflow/sagaflow/saga/service"
)

// TestREADMEListsEveryVariable keeps the README's configuration table true
// to the orchestrator's configuration.
func TestREADMEListsEveryVariable(t *testing.T) {
	missing, err := service.UndocumentedVars("../README.md", &Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range missing {
		t.Errorf("README.md's configuration table has no row for %s", v)
	}
}
