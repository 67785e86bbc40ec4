package service

import (
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"runtime"
	"strings"

	"github.com/sagaflow/sagaflow"
)

// environment is the process environment, with the development defaults of
// .env for DATABASE_URL and AMQP_URL where it does not set them.
func environment() map[string]string {
	m := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	for _, k := range []string{"DATABASE_URL", "AMQP_URL"} {
		if _, ok := m[k]; !ok {
			m[k] = sagaflow.Default(k)
		}
	}
	return m
}

// Command is what a binary was asked to do.
type Command int

const (
	// CommandServe runs the service (no argument).
	CommandServe Command = iota
	// CommandMigrate applies the pending migrations and exits ("migrate").
	CommandMigrate
	// CommandMigrateStatus prints where the migrations stand and exits
	// ("migrate status").
	CommandMigrateStatus
	// CommandCheckDeploy prints the live sagas the orchestrator's
	// definitions could not drive, and exits ("check-deploy").
	CommandCheckDeploy
)

// HandleFlags reads the command line every binary shares and returns what
// to do: serve (no argument), "migrate", "migrate status" or
// "check-deploy" (which only orchestrators carry out). -version
// prints the version and -help the environment variables cfg reads, with
// their defaults; both exit 0. Configuration itself comes from the
// environment only, so any other argument is an error (exit 2). cfg is the
// binary's configuration struct with its per-binary defaults already set.
func HandleFlags(name, summary string, cfg any) Command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(os.Args[1:])
	args := fs.Args()
	switch {
	case err == flag.ErrHelp:
		PrintHelp(os.Stdout, name, summary, cfg)
		os.Exit(0)
	case err != nil:
		fmt.Fprintf(os.Stderr, "%s: %v (configuration comes from the environment; %s -help lists it)\n", name, err, name)
		os.Exit(2)
	case *showVersion:
		fmt.Printf("%s %s (%s)\n", name, sagaflow.Version(), runtime.Version())
		os.Exit(0)
	case len(args) == 0:
		return CommandServe
	case len(args) == 1 && args[0] == "migrate":
		return CommandMigrate
	case len(args) == 2 && args[0] == "migrate" && args[1] == "status":
		return CommandMigrateStatus
	case len(args) == 1 && args[0] == "check-deploy":
		return CommandCheckDeploy
	}
	fmt.Fprintf(os.Stderr, "%s: unexpected argument %q (usage: %s [migrate [status] | check-deploy]; configuration comes from the environment; %s -help lists it)\n",
		name, strings.Join(args, " "), name, name)
	os.Exit(2)
	return CommandServe
}

// EnvVar is one environment variable a configuration reads.
type EnvVar struct {
	Name, Default, Help string
}

// EnvVars lists the environment variables of a configuration struct (a
// pointer), in field order, embedded structs first where they come first.
// A field's default is its envDefault tag, else the value already in the
// field (a per-binary default), else the value of .env.
func EnvVars(cfg any) []EnvVar {
	var out []EnvVar
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		t := v.Type()
		for i := range t.NumField() {
			f, fv := t.Field(i), v.Field(i)
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				walk(fv)
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
			if name == "" {
				continue
			}
			def, ok := f.Tag.Lookup("envDefault")
			if !ok && !fv.IsZero() {
				def = fmt.Sprint(fv.Interface())
			}
			if def == "" {
				def = sagaflow.Default(name)
			}
			out = append(out, EnvVar{Name: name, Default: def, Help: f.Tag.Get("help")})
		}
	}
	walk(reflect.ValueOf(cfg).Elem())
	return out
}

// PrintHelp writes what -help prints.
func PrintHelp(w io.Writer, name, summary string, cfg any) {
	fmt.Fprintf(w, "%s %s: %s\n\n", name, sagaflow.Version(), summary)
	fmt.Fprintf(w, "Usage: %s [-version | -help | migrate [status] | check-deploy]\n\n", name)
	fmt.Fprintf(w, "Without an argument it serves until SIGINT or SIGTERM, after applying its\n")
	fmt.Fprintf(w, "pending database migrations (unless AUTO_MIGRATE=false). \"migrate\" applies\n")
	fmt.Fprintf(w, "them and exits; \"migrate status\" prints where they stand and exits 0 when\n")
	fmt.Fprintf(w, "the database is current, 3 when migrations are pending. \"check-deploy\"\n")
	fmt.Fprintf(w, "(an orchestrator's) lists the live sagas its saga definitions could not\n")
	fmt.Fprintf(w, "drive and exits 0 when there are none, 4 when there are, 3 when migrations\n")
	fmt.Fprintf(w, "are pending; an orchestrator refuses to start while there are any.\n\n")
	fmt.Fprintf(w, "Configuration is read from these environment variables:\n\n")
	for _, v := range EnvVars(cfg) {
		def := v.Default
		if def == "" {
			def = "unset"
		}
		fmt.Fprintf(w, "  %s\n    \t%s (default %s)\n", v.Name, v.Help, def)
	}
}

// UndocumentedVars returns the environment variables of cfg that no table
// row of the Markdown file at path names (a row starts with "| `"); the
// tests keep README.md true to the code with it.
func UndocumentedVars(path string, cfg any) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rows strings.Builder
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "| `") {
			rows.WriteString(line + "\n")
		}
	}
	var missing []string
	for _, v := range EnvVars(cfg) {
		if !strings.Contains(rows.String(), "`"+v.Name+"`") {
			missing = append(missing, v.Name)
		}
	}
	return missing, nil
}
