package collect

import (
	"testing"

	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// TestMain fails a passing run whose goroutines did not all end.
func TestMain(m *testing.M) { sagatest.Main(m) }
