// Package archtest guards the boundaries of the engine: what each package
// under saga/ may import, that the trip example builds on public packages
// only, and that the engine's types speak of commands, replies and events,
// never of AMQP's exchanges, routing keys and reply-to queues; and one rule
// of the REST API: a handler never hands its *gin.Context on as a
// context.Context.
package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/saga/sagatest"
)

func TestMain(m *testing.M) { sagatest.Main(m) }

const module = "github.com/sagaflow/sagaflow"

// pkg is what `go list -json` says of a package.
type pkg struct {
	ImportPath string
	Dir        string
	Imports    []string
	Deps       []string
	GoFiles    []string
	// Export is the compiled export data (with go list -export).
	Export    string
	ImportMap map[string]string
}

// list runs `go list -json` with args in dir: each package with its
// direct imports and its dependencies.
func list(t *testing.T, dir string, args ...string) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, args...)...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v in %s: %v\n%s", args, dir, err, stderr.String())
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		pkgs[p.ImportPath] = p
	}
	if len(pkgs) == 0 {
		t.Fatalf("go list %v in %s listed no package", args, dir)
	}
	return pkgs
}

// root is the repository's root directory.
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// rule forbids packages matching forbid among a package's dependencies,
// direct or not.
type rule struct {
	why    string
	forbid *regexp.Regexp
}

var (
	pgx      = regexp.MustCompile(`^github\.com/jackc/pgx/`)
	amqp     = regexp.MustCompile(`^github\.com/rabbitmq/amqp091-go$`)
	gin      = regexp.MustCompile(`^github\.com/gin-gonic/`)
	app      = regexp.MustCompile(`^github\.com/sagaflow/sagaflow/(internal|orchestrator|workers|examples)(/|$)`)
	internal = regexp.MustCompile(`^github\.com/sagaflow/sagaflow/internal(/|$)`)
)

// engineRules are the boundaries of saga/...: the engine and its
// coordinator know no database driver, no broker client and no web
// framework; only the store, the migrations and the worker runtime speak to
// PostgreSQL, only the bus and the worker runtime to RabbitMQ; and nothing
// of the engine leans on the order application.
func engineRules() map[string][]rule {
	nothing := func(why string, re *regexp.Regexp) rule { return rule{why: why, forbid: re} }
	core := []rule{
		nothing("the engine knows no database driver", pgx),
		nothing("the engine knows no broker client", amqp),
		nothing("the engine knows no web framework", gin),
		nothing("the engine knows nothing of the order application", app),
	}
	return map[string][]rule{
		module + "/saga":                  core,
		module + "/saga/coordinator":      core,
		module + "/saga/sagaprom":         core,
		module + "/saga/internal/collect": core,
		module + "/saga/internal/pgtx":    {nothing("the engine knows nothing of the order application", app)},
		module + "/saga/pgmigrate":        {nothing("migrations know no broker", amqp), nothing("the engine knows no web framework", gin), nothing("the engine knows nothing of the order application", app)},
		module + "/saga/pgstore":          {nothing("the store knows no broker", amqp), nothing("the engine knows no web framework", gin), nothing("the engine knows nothing of the order application", app)},
		module + "/saga/amqpbus":          {nothing("the bus knows no database", pgx), nothing("the engine knows no web framework", gin), nothing("the engine knows nothing of the order application", app)},
		module + "/saga/worker":           {nothing("the engine knows no web framework", gin), nothing("the engine knows nothing of the order application", app)},
		module + "/saga/service":          {nothing("the engine knows no web framework", gin), nothing("the engine knows nothing of the order application", app)},
		module + "/saga/console":          {nothing("the engine knows no web framework", gin), nothing("the engine knows nothing of the order application", app)},
		module + "/saga/sagatest":         {nothing("the engine knows no web framework", gin), nothing("the engine knows nothing of the order application", app)},
	}
}

// TestEngineImports checks every package under saga/ against its rules, and
// that every such package has rules (a new one must say what it may use).
func TestEngineImports(t *testing.T) {
	pkgs := list(t, root(t), "./saga/...")
	rules := engineRules()
	for path, p := range pkgs {
		rs, ok := rules[path]
		if !ok {
			t.Errorf("%s has no import rules in archtest: add them", path)
			continue
		}
		for _, r := range rs {
			for _, dep := range p.Deps {
				if r.forbid.MatchString(dep) {
					t.Errorf("%s depends on %s: %s (it imports %s)", path, dep, r.why, strings.Join(p.Imports, " "))
					break
				}
			}
		}
	}
	for path := range rules {
		if _, ok := pkgs[path]; !ok {
			t.Errorf("archtest has rules for %s, which does not exist", path)
		}
	}
}

// TestRulesCatchAViolation makes sure the rule check sees a forbidden
// dependency: a package that does have pgx among its dependencies.
func TestRulesCatchAViolation(t *testing.T) {
	p := list(t, root(t), "./saga/pgstore")[module+"/saga/pgstore"]
	found := false
	for _, dep := range p.Deps {
		if pgx.MatchString(dep) {
			found = true
		}
	}
	if !found {
		t.Fatal("saga/pgstore's dependencies lack pgx: the listing the rules read is wrong")
	}
}

// TestExampleUsesPublicPackagesOnly: the trip example is a module of its
// own that builds, as an outsider would, on public packages only.
func TestExampleUsesPublicPackagesOnly(t *testing.T) {
	dir := filepath.Join(root(t), "examples", "trip")
	deps := list(t, dir, "-deps", "./...")
	var own int
	for dep := range deps {
		if internal.MatchString(dep) {
			t.Errorf("the trip example depends on %s, which an outsider cannot import", dep)
		}
		if strings.HasPrefix(dep, module+"/saga") {
			own++
		}
	}
	if own == 0 {
		t.Fatal("the trip example depends on no package of the engine: the listing is wrong")
	}
}

// amqpWords are AMQP's names for what the engine calls a command's type and
// a reply's address.
var amqpWords = regexp.MustCompile(`(?i)exchange|routing_?key|reply_?to`)

// TestEngineTypesSpeakNoAMQP reads the engine's and the coordinator's
// sources: no type, field, JSON tag, function, method, constant or variable
// is named after an exchange, a routing key or a reply-to queue.
func TestEngineTypesSpeakNoAMQP(t *testing.T) {
	for _, rel := range []string{"saga", "saga/coordinator"} {
		p := list(t, root(t), "./"+rel)[module+"/"+rel]
		var names int
		for _, f := range p.GoFiles {
			for _, n := range identifiers(t, filepath.Join(p.Dir, f)) {
				names++
				if amqpWords.MatchString(n.name) {
					t.Errorf("%s: %s %q speaks AMQP", n.pos, n.kind, n.name)
				}
			}
		}
		if names < 20 {
			t.Fatalf("%s: only %d names read: the parser missed the package", rel, names)
		}
	}
}

// TestAMQPWordsAreCaught: the words are caught in the shapes they took
// before the engine was made transport-neutral.
func TestAMQPWordsAreCaught(t *testing.T) {
	for _, n := range []string{"Exchange", "RoutingKey", "ReplyTo", "routing_key", "reply_to", "EventsExchange"} {
		if !amqpWords.MatchString(n) {
			t.Errorf("%q is not caught", n)
		}
	}
	for _, n := range []string{"Type", "Address", "Reply", "Route", "Key"} {
		if amqpWords.MatchString(n) {
			t.Errorf("%q is caught, but speaks no AMQP", n)
		}
	}
}

type name struct {
	pos  token.Position
	kind string
	name string
}

// identifiers lists the names a Go file declares at package level, the
// fields and methods of its types, and its struct tags' JSON names.
func identifiers(t *testing.T, path string) []name {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var out []name
	add := func(id *ast.Ident, kind string) {
		if id != nil && id.Name != "_" {
			out = append(out, name{fset.Position(id.Pos()), kind, id.Name})
		}
	}
	fields := func(fl *ast.FieldList, kind string) {
		if fl == nil {
			return
		}
		for _, fd := range fl.List {
			for _, id := range fd.Names {
				add(id, kind)
			}
			if fd.Tag != nil {
				tag, err := strconv.Unquote(fd.Tag.Value)
				if err == nil {
					if js, ok := reflect.StructTag(tag).Lookup("json"); ok {
						out = append(out, name{fset.Position(fd.Tag.Pos()), "JSON field", strings.Split(js, ",")[0]})
					}
				}
			}
		}
	}
	for _, d := range f.Decls {
		switch d := d.(type) {
		case *ast.FuncDecl:
			add(d.Name, "function")
		case *ast.GenDecl:
			for _, s := range d.Specs {
				switch s := s.(type) {
				case *ast.TypeSpec:
					add(s.Name, "type")
					ast.Inspect(s.Type, func(n ast.Node) bool {
						switch n := n.(type) {
						case *ast.StructType:
							fields(n.Fields, "field")
						case *ast.InterfaceType:
							fields(n.Methods, "method")
						}
						return true
					})
				case *ast.ValueSpec:
					for _, id := range s.Names {
						add(id, "constant or variable")
					}
				}
			}
		}
	}
	return out
}
