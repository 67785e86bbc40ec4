package sagaflow

import "runtime/debug"

// version is set at build time by the Makefile
// (-ldflags "-X github.com/sagaflow/sagaflow.version=$(git describe)").
var version string

// Version is the version of the running binary: the one the Makefile
// stamped in (`git describe`), else the module version Go recorded (a
// binary built with `go install ...@v1.2.3`), else "devel".
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}
