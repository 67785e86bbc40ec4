package archtest

import (
	"errors"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ginContext is the type a gin handler is given.
const ginContext = "*github.com/gin-gonic/gin.Context"

// TestHandlersPassTheRequestContext type-checks the REST API and fails
// where a handler hands its *gin.Context to something that takes a
// context.Context: gin recycles the Context once the handler returns, so
// whatever keeps it longer (a consumer's watchdog, a goroutine) reads
// another request's fields, a data race. Handlers pass c.Request.Context().
func TestHandlersPassTheRequestContext(t *testing.T) {
	found := ginContextsAsContexts(t, "./orchestrator/api")
	for _, f := range found {
		t.Errorf("%s: a *gin.Context passed as a context.Context (pass c.Request.Context())", f)
	}
}

// TestGinContextCheckCatchesAViolation: the check finds the shape of the
// race it guards against.
func TestGinContextCheckCatchesAViolation(t *testing.T) {
	dir := filepath.Join(root(t), "internal", "archtest", "testdata", "ginctx")
	if _, err := os.Stat(dir); err != nil {
		t.Fatal(err)
	}
	if found := ginContextsAsContexts(t, "./internal/archtest/testdata/ginctx"); len(found) != 1 {
		t.Errorf("found %v, want the one violation of testdata/ginctx", found)
	}
}

// ginContextsAsContexts lists the call arguments of the package at rel
// (relative to the repository) whose type is *gin.Context and whose
// parameter is of another type (a context.Context).
func ginContextsAsContexts(t *testing.T, rel string) []string {
	t.Helper()
	exports, target := exportData(t, rel)
	fset := token.NewFileSet()
	var files []*ast.File
	for _, name := range target.GoFiles {
		f, err := parser.ParseFile(fset, filepath.Join(target.Dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	lookup := func(path string) (io.ReadCloser, error) {
		if p, ok := target.ImportMap[path]; ok {
			path = p
		}
		file := exports[path]
		if file == "" {
			file = exports["vendor/"+path]
		}
		if file == "" {
			return nil, errors.New("no export data for " + path)
		}
		return os.Open(file)
	}
	info := &types.Info{Types: map[ast.Expr]types.TypeAndValue{}}
	conf := types.Config{Importer: importer.ForCompiler(fset, "gc", lookup)}
	if _, err := conf.Check(target.ImportPath, fset, files, info); err != nil {
		t.Fatalf("type-check %s: %v", rel, err)
	}
	var found []string
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sig, ok := info.TypeOf(call.Fun).(*types.Signature)
			if !ok {
				return true
			}
			params := sig.Params()
			for i, a := range call.Args {
				if at := info.TypeOf(a); at == nil || at.String() != ginContext {
					continue
				}
				var pt types.Type
				switch {
				case sig.Variadic() && i >= params.Len()-1:
					pt = params.At(params.Len() - 1).Type()
				case i < params.Len():
					pt = params.At(i).Type()
				}
				if pt != nil && pt.String() != ginContext {
					found = append(found, fset.Position(a.Pos()).String())
				}
			}
			return true
		})
	}
	return found
}

// exportData builds the package at rel and its dependencies (go build's
// cache makes it quick) and returns each one's compiled export data, by
// import path, and the package itself.
func exportData(t *testing.T, rel string) (map[string]string, pkg) {
	t.Helper()
	pkgs := list(t, root(t), "-export", "-deps", rel)
	exports := map[string]string{}
	for path, p := range pkgs {
		exports[path] = p.Export
	}
	target, ok := pkgs[module+"/"+strings.TrimPrefix(rel, "./")]
	if !ok {
		t.Fatalf("go list -export %s did not list it", rel)
	}
	return exports, target
}
