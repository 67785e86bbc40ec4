package sagaflow

import (
	_ "embed"
	"os"
	"strings"
	"sync"
)

// dotEnv is the repository's .env: the development defaults (credentials,
// URLs) that the scripts and Docker Compose read too.
//
//go:embed .env
var dotEnv string

var (
	defaultsOnce sync.Once
	defaults     map[string]string
)

// Default returns the development default of a variable of .env
// ("DATABASE_URL", "AMQP_URL", "RABBITMQ_MANAGEMENT_URL", ...), or "" when
// .env does not name it. References to other variables (${SAGAFLOW_PG_USER})
// are expanded with the environment's value where one is set, as the
// scripts and Docker Compose do; the variable itself is not looked up in the
// environment: that is the caller's job (a default is what applies when the
// environment says nothing).
func Default(name string) string {
	defaultsOnce.Do(func() { defaults = parseDotEnv(dotEnv, os.LookupEnv) })
	return defaults[name]
}

// parseDotEnv reads KEY=VALUE lines (comments and blank lines skipped) and
// expands ${NAME} in values with lookup first, then the lines above.
func parseDotEnv(src string, lookup func(string) (string, bool)) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(src, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		out[key] = os.Expand(value, func(ref string) string {
			if v, ok := lookup(ref); ok {
				return v
			}
			return out[ref]
		})
	}
	return out
}
