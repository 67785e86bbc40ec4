package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"maps"
	"mime"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/goccy/go-yaml"
	"github.com/google/uuid"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/sagaflow/sagaflow/docs"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/api"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga"
)

// The tests of this file hold docs/openapi.yaml to the code: the routes
// the router registers, the enums the code defines, and the responses the
// running system gives. Each response is validated against the document
// (status listed for its operation, Content-Type, headers, body schema),
// and each request against the document too: a request the server
// accepted must be valid there, and a refused one that breaks a rule the
// document states must be invalid there.

// untestable lists the documented (operation, status) pairs that
// TestOpenAPIConformance cannot produce, with the reason. A key is
// "METHOD /path STATUS", or "* STATUS" for every operation.
var untestable = map[string]string{
	"POST /admin/replays 429":              "needs two bulk actions at once on one orchestrator: a race this test does not stage",
	"POST /admin/dead-letters/redrive 429": "needs two bulk actions at once on one orchestrator: a race this test does not stage",
	"GET /admin/dead-letters 503":          "needs RabbitMQ away while PostgreSQL answers; the tests never stop the shared broker",
	"POST /admin/dead-letters/redrive 503": "needs RabbitMQ away while PostgreSQL answers; the tests never stop the shared broker",
	"* 500": "internal is answered only on an unexpected error or a panic (a bug): nothing a client sends, " +
		"nor anything this test can arrange without changing the code, produces it",
}

// docURL names the document inside the schema compiler; nothing is
// fetched from it.
const docURL = "https://sagaflow.invalid/openapi.json"

// openAPI is docs/openapi.yaml, decoded, with its schemas compiled on
// demand.
type openAPI struct {
	doc      map[string]any
	compiler *jsonschema.Compiler

	mu      sync.Mutex
	schemas map[string]*jsonschema.Schema // by JSON pointer

	ops     map[string]*apiOp   // by "METHOD /path"
	methods map[string][]string // path -> its methods
}

// apiOp is one documented operation.
type apiOp struct {
	Method, Path, ID string
	ptr              string // JSON pointer of the operation object
}

func (o *apiOp) key() string { return o.Method + " " + o.Path }

// httpMethods are the operation keys of an OpenAPI path item.
var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

func loadOpenAPI(t testing.TB) *openAPI {
	t.Helper()
	j, err := docs.OpenAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		t.Fatalf("docs/openapi.yaml as JSON: %v", err)
	}
	doc, ok := raw.(map[string]any)
	if !ok {
		t.Fatal("docs/openapi.yaml is not an object")
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020) // OpenAPI 3.1's dialect
	c.AssertFormat()                     // uuid and date-time are checked, not annotations
	if err := c.AddResource(docURL, doc); err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
	d := &openAPI{doc: doc, compiler: c, schemas: map[string]*jsonschema.Schema{},
		ops: map[string]*apiOp{}, methods: map[string][]string{}}
	paths, _ := doc["paths"].(map[string]any)
	if len(paths) == 0 {
		t.Fatal("docs/openapi.yaml has no paths")
	}
	for path, item := range paths {
		item, _ := item.(map[string]any)
		for _, m := range httpMethods {
			op, ok := item[m].(map[string]any)
			if !ok {
				continue
			}
			id, _ := op["operationId"].(string)
			o := &apiOp{Method: strings.ToUpper(m), Path: path, ID: id, ptr: "/paths/" + escPtr(path) + "/" + m}
			d.ops[o.key()] = o
			d.methods[path] = append(d.methods[path], o.Method)
		}
	}
	return d
}

// escPtr escapes a JSON pointer token.
func escPtr(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}

// node returns the value at a JSON pointer, or nil.
func (d *openAPI) node(ptr string) any {
	var v any = d.doc
	if ptr == "" {
		return v
	}
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
		switch x := v.(type) {
		case map[string]any:
			v = x[tok]
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

// deref follows $ref from ptr to the object it names, and returns the
// object and its pointer.
func (d *openAPI) deref(t testing.TB, ptr string) (map[string]any, string) {
	t.Helper()
	for range 10 {
		obj, ok := d.node(ptr).(map[string]any)
		if !ok {
			t.Fatalf("docs/openapi.yaml has no object at %q", ptr)
		}
		ref, ok := obj["$ref"].(string)
		if !ok {
			return obj, ptr
		}
		if !strings.HasPrefix(ref, "#") {
			t.Fatalf("docs/openapi.yaml: %q refers outside the document: %s", ptr, ref)
		}
		ptr = strings.TrimPrefix(ref, "#")
	}
	t.Fatalf("docs/openapi.yaml: a $ref loop at %q", ptr)
	return nil, ""
}

// schema compiles the schema at ptr once.
func (d *openAPI) schema(t testing.TB, ptr string) *jsonschema.Schema {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.schemas[ptr]; ok {
		return s
	}
	s, err := d.compiler.Compile(docURL + "#" + ptr)
	if err != nil {
		t.Fatalf("docs/openapi.yaml: the schema at %s does not compile: %v", ptr, err)
	}
	d.schemas[ptr] = s
	return s
}

// schemaType is the "type" of the schema at ptr, following $ref.
func (d *openAPI) schemaType(t testing.TB, ptr string) string {
	obj, _ := d.deref(t, ptr)
	s, _ := obj["type"].(string)
	return s
}

// response returns the pointer of an operation's resolved response for a
// status, and whether the document lists that status.
func (d *openAPI) response(t testing.TB, op *apiOp, status int) (string, bool) {
	t.Helper()
	ptr := op.ptr + "/responses/" + strconv.Itoa(status)
	if d.node(ptr) == nil {
		return "", false
	}
	_, ptr = d.deref(t, ptr)
	return ptr, true
}

// statuses lists the statuses documented for an operation.
func (d *openAPI) statuses(op *apiOp) []string {
	rs, _ := d.node(op.ptr + "/responses").(map[string]any)
	out := make([]string, 0, len(rs))
	for s := range rs {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// enum returns the enum of a component schema.
func (d *openAPI) enum(t testing.TB, name string) []string {
	t.Helper()
	obj, _ := d.deref(t, "/components/schemas/"+name)
	vals, ok := obj["enum"].([]any)
	if !ok {
		t.Fatalf("components/schemas/%s has no enum", name)
	}
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		s, _ := v.(string)
		out = append(out, s)
	}
	return out
}

// conformance checks requests and responses against the document and
// counts which (operation, status) pairs were validated.
type conformance struct {
	doc *openAPI

	mu               sync.Mutex
	seen             map[string]int  // "METHOD /path STATUS"
	methodNotAllowed map[string]bool // documented paths whose 405 was validated
	noRoute          bool            // the 404 of an unknown path was validated
}

func newConformance(doc *openAPI) *conformance {
	return &conformance{doc: doc, seen: map[string]int{}, methodNotAllowed: map[string]bool{}}
}

// apiCall is one request of the test, named by its documented operation.
type apiCall struct {
	op     string            // "POST /orders"
	path   map[string]string // path parameters
	query  url.Values
	body   any               // nil, []byte sent as is, or a value sent as JSON
	header map[string]string // as testenv.Request: an empty value removes the header
	want   int               // the status the test expects
	// docRejects says the request breaks a rule the document states, so
	// the document must refuse it as the server did.
	docRejects bool
}

// send sends a request to base, checks the status it expected, and
// validates the request and the response against the document.
func (c *conformance) send(t *testing.T, s *testenv.System, base string, ac apiCall) testenv.Response {
	t.Helper()
	op := c.doc.ops[ac.op]
	if op == nil {
		t.Fatalf("the test calls %s, which docs/openapi.yaml does not document", ac.op)
	}
	path := op.Path
	for name, v := range ac.path {
		path = strings.ReplaceAll(path, "{"+name+"}", url.PathEscape(v))
	}
	if strings.Contains(path, "{") {
		t.Fatalf("%s: path parameters missing: %s", ac.op, path)
	}
	if len(ac.query) > 0 {
		path += "?" + ac.query.Encode()
	}
	var body []byte
	switch b := ac.body.(type) {
	case nil:
	case []byte:
		body = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		body = j
	}
	var sent any
	if body != nil {
		sent = body
	}
	if testenv.AdminPath(op.Path) {
		base = s.AdminOf(base) // the operators' routes are on the orchestrator's admin listener
	}
	r, err := testenv.Request(s.HTTP, base, op.Method, path, sent, ac.header)
	if err != nil {
		t.Fatalf("%s %s: %v", op.Method, path, err)
	}
	if r.Status != ac.want {
		t.Errorf("%s %s: %d %s, want %d", op.Method, path, r.Status, trunc(r.Body), ac.want)
	}
	c.checkResponse(t, op, path, r)
	c.checkRequest(t, op, path, ac, body, r.Status)
	return r
}

// checkResponse validates a response of op against the document and
// counts the pair.
func (c *conformance) checkResponse(t *testing.T, op *apiOp, path string, r testenv.Response) {
	t.Helper()
	ptr, ok := c.doc.response(t, op, r.Status)
	if !ok {
		t.Errorf("%s %s answered %d, which docs/openapi.yaml does not list for %s: %s",
			op.Method, path, r.Status, op.key(), trunc(r.Body))
		return
	}
	if c.validateResponse(t, fmt.Sprintf("%s %s -> %d", op.Method, path, r.Status), ptr, r) {
		c.mu.Lock()
		c.seen[op.key()+" "+strconv.Itoa(r.Status)]++
		c.mu.Unlock()
	}
}

// validateResponse checks a response against the response object at ptr:
// its headers, its Content-Type and its body. It reports whether all
// held.
func (c *conformance) validateResponse(t *testing.T, what, ptr string, r testenv.Response) bool {
	t.Helper()
	ok := true
	fail := func(format string, args ...any) {
		t.Helper()
		ok = false
		t.Errorf("%s: "+format, append([]any{what}, args...)...)
	}
	resp, _ := c.doc.deref(t, ptr)
	headers, _ := resp["headers"].(map[string]any)
	for name := range headers {
		h, hptr := c.doc.deref(t, ptr+"/headers/"+escPtr(name))
		values := r.Header.Values(name)
		if len(values) == 0 {
			if required, _ := h["required"].(bool); required {
				fail("header %s is required by the document but missing", name)
			}
			continue
		}
		if err := c.doc.schema(t, hptr+"/schema").Validate(values[0]); err != nil {
			fail("header %s: %q does not match the document: %v", name, values[0], err)
		}
	}
	content, _ := resp["content"].(map[string]any)
	if len(content) == 0 {
		if len(r.Body) > 0 {
			fail("the document gives no body, the server sent %s", trunc(r.Body))
		}
		return ok
	}
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if _, documented := content[mt]; err != nil || !documented {
		fail("Content-Type %q is not one the document lists (%v)", ct, slices.Sorted(maps.Keys(content)))
		return ok
	}
	var v any = string(r.Body)
	if mt == "application/json" {
		if v, err = jsonschema.UnmarshalJSON(bytes.NewReader(r.Body)); err != nil {
			fail("the body is not JSON: %v: %s", err, trunc(r.Body))
			return ok
		}
	}
	if err := c.doc.schema(t, ptr+"/content/"+escPtr(mt)+"/schema").Validate(v); err != nil {
		fail("the body does not match docs/openapi.yaml: %v\nbody: %s", err, trunc(r.Body))
	}
	return ok
}

// checkRequest validates the request against the document: accepted, it
// must be valid; refused for a rule the document states, it must be
// invalid.
func (c *conformance) checkRequest(t *testing.T, op *apiOp, path string, ac apiCall, body []byte, status int) {
	t.Helper()
	errs := c.requestErrors(t, op, ac, body)
	switch {
	case ac.docRejects && len(errs) == 0:
		t.Errorf("%s %s: the server refused the request (%d) but docs/openapi.yaml accepts it; body %s",
			op.Method, path, status, trunc(body))
	case status < 300 && len(errs) > 0:
		t.Errorf("%s %s: the server accepted the request (%d) but docs/openapi.yaml refuses it: %s",
			op.Method, path, status, strings.Join(errs, "; "))
	}
}

// requestErrors lists how a request breaks the document.
func (c *conformance) requestErrors(t *testing.T, op *apiOp, ac apiCall, body []byte) []string {
	t.Helper()
	var errs []string
	opObj, _ := c.doc.deref(t, op.ptr)
	params, _ := opObj["parameters"].([]any)
	for i := range params {
		p, pptr := c.doc.deref(t, op.ptr+"/parameters/"+strconv.Itoa(i))
		name, _ := p["name"].(string)
		in, _ := p["in"].(string)
		required, _ := p["required"].(bool)
		var (
			value   string
			present bool
		)
		switch in {
		case "path":
			value, present = ac.path[name]
		case "query":
			present = ac.query.Has(name)
			value = ac.query.Get(name)
		case "header":
			value = ac.header[name]
			present = value != ""
		}
		if !present {
			if required {
				errs = append(errs, fmt.Sprintf("%s parameter %s is required", in, name))
			}
			continue
		}
		var v any = value
		if c.doc.schemaType(t, pptr+"/schema") == "integer" {
			if _, err := strconv.ParseInt(value, 10, 64); err == nil {
				v = json.Number(value)
			}
		}
		if err := c.doc.schema(t, pptr+"/schema").Validate(v); err != nil {
			errs = append(errs, fmt.Sprintf("%s parameter %s=%q: %v", in, name, value, err))
		}
	}
	if c.doc.node(op.ptr+"/requestBody") == nil {
		if len(body) > 0 {
			errs = append(errs, "the operation takes no body")
		}
		return errs
	}
	rb, rbPtr := c.doc.deref(t, op.ptr+"/requestBody")
	if len(body) == 0 {
		if required, _ := rb["required"].(bool); required {
			errs = append(errs, "the body is required")
		}
		return errs
	}
	ct := "application/json" // what testenv.Request sends unless told otherwise
	if v, ok := ac.header["Content-Type"]; ok {
		ct = v
	}
	mt, _, err := mime.ParseMediaType(ct)
	content, _ := rb["content"].(map[string]any)
	if _, documented := content[mt]; err != nil || !documented {
		return append(errs, fmt.Sprintf("Content-Type %q is not documented", ct))
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return append(errs, fmt.Sprintf("the body is not JSON: %v", err))
	}
	if err := c.doc.schema(t, rbPtr+"/content/"+escPtr(mt)+"/schema").Validate(v); err != nil {
		errs = append(errs, fmt.Sprintf("body: %v", err))
	}
	return errs
}

// checkUnrouted sends method to a documented path that does not list it
// and expects 405 with an Allow header naming exactly the documented
// methods.
func (c *conformance) checkUnrouted(t *testing.T, s *testenv.System, path string) {
	t.Helper()
	documented := c.doc.methods[path]
	method := ""
	for _, m := range []string{http.MethodDelete, http.MethodPatch, http.MethodPut, http.MethodPost, http.MethodGet} {
		if !slices.Contains(documented, m) {
			method = m
			break
		}
	}
	concrete := strings.NewReplacer("{id}", uuid.NewString(), "{sku}", "sku-x").Replace(path)
	base := s.BaseURL
	if testenv.AdminPath(path) {
		base = s.AdminURL
	}
	r, err := testenv.Request(s.HTTP, base, method, concrete, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	what := fmt.Sprintf("%s %s -> %d", method, concrete, r.Status)
	if r.Status != http.StatusMethodNotAllowed {
		t.Errorf("%s, want 405: %s", what, trunc(r.Body))
		return
	}
	ok := c.validateResponse(t, what, "/components/responses/MethodNotAllowed", r)
	allow := strings.Split(r.Header.Get("Allow"), ", ")
	if !sameSet(allow, documented) {
		t.Errorf("%s: Allow %q, but docs/openapi.yaml documents %v for %s", what, r.Header.Get("Allow"), documented, path)
		ok = false
	}
	if ok {
		c.mu.Lock()
		c.methodNotAllowed[path] = true
		c.mu.Unlock()
	}
}

// verifyCoverage fails for every documented (operation, status) pair that
// was neither validated nor listed in untestable, and for stale entries of
// untestable.
func (c *conformance) verifyCoverage(t *testing.T) {
	t.Helper()
	documented := map[string]bool{}
	var skipped []string
	for _, op := range c.doc.ops {
		for _, st := range c.doc.statuses(op) {
			key := op.key() + " " + st
			documented[key] = true
			switch reason, wild := untestable[key], untestable["* "+st]; {
			case c.seen[key] > 0 && (reason != "" || wild != ""):
				t.Errorf("%s is listed as untestable but was validated: remove it from untestable", key)
			case c.seen[key] > 0:
			case reason != "" || wild != "":
				skipped = append(skipped, key)
			default:
				t.Errorf("%s is documented but no response of it was produced and validated: "+
					"produce it in this test, or list it in untestable with the reason", key)
			}
		}
	}
	sort.Strings(skipped)
	t.Logf("validated %d (operation, status) pairs; not produced, as untestable allows: %s",
		len(c.seen), strings.Join(skipped, ", "))
	for key := range untestable {
		if !strings.HasPrefix(key, "* ") && !documented[key] {
			t.Errorf("untestable lists %s, which docs/openapi.yaml does not document", key)
		}
	}
	for path := range c.doc.methods {
		if !c.methodNotAllowed[path] {
			t.Errorf("the 405 of %s was never validated", path)
		}
	}
	if !c.noRoute {
		t.Error("the 404 of an unknown path was never validated")
	}
}

// TestOpenAPIDocument checks the document itself: OpenAPI 3.1.0, every
// $ref resolves, every operation has a unique id, every schema compiles
// (validated against JSON Schema 2020-12), every error response uses the
// one Error schema, and every object of components/schemas is closed.
func TestOpenAPIDocument(t *testing.T) {
	d := loadOpenAPI(t)
	if v, _ := d.doc["openapi"].(string); v != "3.1.0" {
		t.Errorf("openapi = %q, want 3.1.0", v)
	}
	var walk func(v any, ptr string)
	walk = func(v any, ptr string) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				if !strings.HasPrefix(ref, "#/") || d.node(strings.TrimPrefix(ref, "#")) == nil {
					t.Errorf("%s: $ref %q does not resolve", ptr, ref)
				}
			}
			for k, e := range x {
				walk(e, ptr+"/"+escPtr(k))
			}
		case []any:
			for i, e := range x {
				walk(e, ptr+"/"+strconv.Itoa(i))
			}
		}
	}
	walk(d.doc, "")
	if t.Failed() {
		return
	}
	ids := map[string]string{}
	for key, op := range d.ops {
		if op.ID == "" {
			t.Errorf("%s has no operationId", key)
		} else if other, dup := ids[op.ID]; dup {
			t.Errorf("operationId %s is used by %s and %s", op.ID, other, key)
		}
		ids[op.ID] = key
		for _, st := range d.statuses(op) {
			code, _ := strconv.Atoi(st)
			ptr, _ := d.response(t, op, code)
			resp, _ := d.deref(t, ptr)
			content, _ := resp["content"].(map[string]any)
			for mt := range content {
				sptr := ptr + "/content/" + escPtr(mt) + "/schema"
				d.schema(t, sptr)
				if code >= 400 && !(key == "GET /readyz" && code == http.StatusServiceUnavailable) && !usesError(d, t, sptr) {
					t.Errorf("%s %s: the error body does not use components/schemas/Error", key, st)
				}
			}
			headers, _ := resp["headers"].(map[string]any)
			for name := range headers {
				_, hptr := d.deref(t, ptr+"/headers/"+escPtr(name))
				d.schema(t, hptr+"/schema")
			}
		}
		opObj, _ := d.deref(t, op.ptr)
		params, _ := opObj["parameters"].([]any)
		for i := range params {
			_, pptr := d.deref(t, op.ptr+"/parameters/"+strconv.Itoa(i))
			d.schema(t, pptr+"/schema")
		}
		if d.node(op.ptr+"/requestBody") != nil {
			_, rbPtr := d.deref(t, op.ptr+"/requestBody")
			d.schema(t, rbPtr+"/content/application~1json/schema")
		}
	}
	schemas, _ := d.node("/components/schemas").(map[string]any)
	for name := range schemas {
		ptr := "/components/schemas/" + escPtr(name)
		d.schema(t, ptr)
		var closed func(v any, ptr string)
		closed = func(v any, ptr string) {
			obj, ok := v.(map[string]any)
			if !ok {
				return
			}
			if props, ok := obj["properties"].(map[string]any); ok {
				ap, apOK := obj["additionalProperties"].(bool)
				up, upOK := obj["unevaluatedProperties"].(bool)
				// A "...Part" is only ever a part (allOf) of closed schemas.
				if !(apOK && !ap) && !(upOK && !up) && !strings.HasSuffix(ptr, "Part") {
					t.Errorf("%s has properties but neither additionalProperties nor unevaluatedProperties false", ptr)
				}
				for k, p := range props {
					closed(p, ptr+"/properties/"+escPtr(k))
				}
			}
			closed(obj["items"], ptr+"/items")
		}
		closed(schemas[name], ptr)
	}
}

// usesError reports whether the schema at ptr is the Error schema or an
// allOf that includes it.
func usesError(d *openAPI, t testing.TB, ptr string) bool {
	const errRef = "#/components/schemas/Error"
	obj, _ := d.node(ptr).(map[string]any)
	if ref, _ := obj["$ref"].(string); ref == errRef {
		return true
	}
	all, _ := obj["allOf"].([]any)
	for _, s := range all {
		if m, _ := s.(map[string]any); m != nil && m["$ref"] == errRef {
			return true
		}
	}
	return false
}

// TestOpenAPIRoutesMatchTheRouter: every route the routers register is
// documented, every documented operation is registered, and the
// operators' routes are on the admin listener only.
func TestOpenAPIRoutesMatchTheRouter(t *testing.T) {
	d := loadOpenAPI(t)
	public, admin := api.New(api.Deps{})
	// /metrics is served beside the admin routes by saga/service.
	registered := map[string]bool{"GET /metrics": true}
	for name, h := range map[string]http.Handler{"public": public, "admin": admin} {
		engine, ok := h.(*gin.Engine)
		if !ok {
			t.Fatalf("api.New returned a %T, not a *gin.Engine", h)
		}
		for _, r := range engine.Routes() {
			if r.Path == "/ui" || strings.HasPrefix(r.Path, "/ui/") {
				continue // the console's pages: HTML, not the API
			}
			segs := strings.Split(r.Path, "/")
			for i, s := range segs {
				if strings.HasPrefix(s, ":") || strings.HasPrefix(s, "*") {
					segs[i] = "{" + s[1:] + "}"
				}
			}
			key := r.Method + " " + strings.Join(segs, "/")
			registered[key] = true
			if d.ops[key] == nil {
				t.Errorf("the router serves %s, which docs/openapi.yaml does not document", key)
			}
			if onAdmin := testenv.AdminPath(r.Path); onAdmin != (name == "admin") {
				t.Errorf("the %s router serves %s", name, key)
			}
		}
	}
	for key := range d.ops {
		if !registered[key] {
			t.Errorf("docs/openapi.yaml documents %s, which the router does not serve", key)
		}
	}
}

// TestOpenAPIEnumsMatchTheCode: the enums and limits of the document are
// the code's.
func TestOpenAPIEnumsMatchTheCode(t *testing.T) {
	d := loadOpenAPI(t)
	def := order.Definition(saga.Retry{}, time.Hour)
	var forward []string
	events := []string{}
	for _, e := range []string{"created", "compensating", "completed", "rejected", "cancelled", "stuck"} {
		events = append(events, def.Name+"."+e)
	}
	for _, s := range def.Steps {
		forward = append(forward, s.Name)
		events = append(events, s.SucceededEvent, s.FailedEvent, s.OverdueEvent)
		for _, e := range s.FailedEvents {
			events = append(events, e)
		}
		if s.Compensation != nil {
			events = append(events, s.Compensation.Event)
		}
	}
	events = slices.DeleteFunc(events, func(e string) bool { return e == "" })
	events = append(events, saga.EventReplayed, saga.EventCancelled, saga.EventRedriven) // an operator's, for every saga
	for name, want := range map[string][]string{
		"OrderState":      def.States(),
		"StateFilter":     append([]string{""}, def.States()...),
		"StepName":        def.StepNames(),
		"ForwardStepName": forward,
		"EventType":       events,
		"StepStatus":      {saga.StepRunning, saga.StepSucceeded, saga.StepFailed},
		"Phase": {string(saga.Pending), string(saga.Running), string(saga.Compensating), string(saga.Completed),
			string(saga.Rejected), string(saga.Cancelled), string(saga.Stuck)},
		"ErrorCode": errorCodes(t),
	} {
		if got := d.enum(t, name); !sameSet(got, want) {
			t.Errorf("components/schemas/%s enum %v, the code has %v", name, got, want)
		}
	}
	checks := []struct {
		ptr  string
		want any
	}{
		{"/components/schemas/OrderRequest/properties/items/maxItems", api.MaxItems},
		{"/components/schemas/ItemRequest/properties/quantity/maximum", api.MaxQuantity},
		{"/components/schemas/Item/properties/quantity/maximum", api.MaxQuantity},
		{"/components/schemas/ActionRecord/properties/kind/enum", []any{saga.KindAction, saga.KindCompensation}},
		{"/components/schemas/SignalRecord/properties/kind/const", saga.KindSignal},
		{"/components/schemas/SignalRecord/properties/status/enum", []any{saga.SignalKept, saga.SignalConsumed}},
		{"/components/schemas/Saga/properties/definition/enum", []any{order.SagaName}},
	}
	for _, c := range checks {
		got := d.node(c.ptr)
		if n, ok := got.(json.Number); ok {
			got = n.String()
			c.want = fmt.Sprint(c.want)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s = %v, the code has %v", c.ptr, got, c.want)
		}
	}
}

// errorCodes reads the Code* constants of orchestrator/api/errors.go.
func errorCodes(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../../orchestrator/api/errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok {
			return true
		}
		for i, name := range vs.Names {
			if !strings.HasPrefix(name.Name, "Code") || i >= len(vs.Values) {
				continue
			}
			if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				v, _ := strconv.Unquote(lit.Value)
				out = append(out, v)
			}
		}
		return true
	})
	if len(out) == 0 {
		t.Fatal("no Code* constants in orchestrator/api/errors.go")
	}
	return out
}

// TestOpenAPIConformance drives every documented operation of the running
// system through its success and its documented errors, and validates
// every request and response against docs/openapi.yaml.
func TestOpenAPIConformance(t *testing.T) {
	s := system(t)
	c := newConformance(loadOpenAPI(t))
	t.Run("served document", func(t *testing.T) { conformServedDocument(t, s, c) })
	t.Run("products", func(t *testing.T) { conformProducts(t, s, c) })
	t.Run("orders", func(t *testing.T) { conformOrders(t, s, c) })
	t.Run("operations", func(t *testing.T) { conformOperations(t, s, c) })
	t.Run("unrouted", func(t *testing.T) {
		for path := range c.doc.methods {
			c.checkUnrouted(t, s, path)
		}
		r, err := testenv.Request(s.HTTP, s.BaseURL, http.MethodGet, "/nowhere", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != http.StatusNotFound {
			t.Errorf("GET /nowhere: %d, want 404", r.Status)
		} else if c.validateResponse(t, "GET /nowhere", "/components/responses/NoRoute", r) {
			c.noRoute = true
		}
	})
	t.Run("no workers, no admin token, no database", func(t *testing.T) { conformDegraded(t, c) })
	if t.Failed() {
		t.Log("coverage not checked: a subtest failed")
		return
	}
	c.verifyCoverage(t)
}

// conformServedDocument: the running orchestrator serves the embedded
// document, and its JSON is its YAML.
func conformServedDocument(t *testing.T, s *testenv.System, c *conformance) {
	j := c.send(t, s, s.BaseURL, apiCall{op: "GET /openapi.json", want: 200})
	want, err := docs.OpenAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(j.Body, want) {
		t.Error("GET /openapi.json differs from docs.OpenAPIJSON()")
	}
	y := c.send(t, s, s.BaseURL, apiCall{op: "GET /openapi.yaml", want: 200})
	if !bytes.Equal(y.Body, docs.OpenAPIYAML) {
		t.Error("GET /openapi.yaml differs from docs/openapi.yaml")
	}
	var fromJSON, fromYAML any
	if err := json.Unmarshal(j.Body, &fromJSON); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(y.Body, &fromYAML); err != nil {
		t.Fatal(err)
	}
	// YAML decodes integers as uint64 or int64: compare through JSON.
	viaJSON, err := json.Marshal(fromYAML)
	if err != nil {
		t.Fatal(err)
	}
	var yamlAsJSON any
	if err := json.Unmarshal(viaJSON, &yamlAsJSON); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromJSON, yamlAsJSON) {
		t.Error("the JSON document does not hold what the YAML document does")
	}
}

// conformProducts: GET /products/{sku} and PUT /admin/products/{sku}.
func conformProducts(t *testing.T, s *testenv.System, c *conformance) {
	base := s.BaseURL
	auth := map[string]string{"Authorization": "Bearer " + s.AdminToken}
	sk := sku(t, "a")
	param := func(v string) map[string]string { return map[string]string{"sku": v} }
	put := func(body any, want int, docRejects bool) testenv.Response {
		t.Helper()
		return c.send(t, s, base, apiCall{op: "PUT /admin/products/{sku}", path: param(sk), body: body,
			header: auth, want: want, docRejects: docRejects})
	}
	put(map[string]any{"name": "Lamp", "price_cents": 1250, "available": 10}, 200, false)
	put(map[string]any{"name": "Lamp", "price_cents": 100_000_000, "available": 1_000_000_000}, 200, false)
	put(map[string]any{"name": strings.Repeat("n", 200), "price_cents": 0, "available": 0}, 200, false)
	for _, tc := range []struct {
		body       any
		docRejects bool
	}{
		{map[string]any{"price_cents": 1, "available": 1}, true},
		{map[string]any{"name": "   ", "price_cents": 1, "available": 1}, true},
		{map[string]any{"name": strings.Repeat("n", 201), "price_cents": 1, "available": 1}, true},
		// Limits count characters, as JSON Schema does.
		{map[string]any{"name": strings.Repeat("é", 201), "price_cents": 1, "available": 1}, true},
		// Control characters: refused by the code, stated in prose.
		{map[string]any{"name": "a\x00b", "price_cents": 1, "available": 1}, false},
		{map[string]any{"name": "x", "price_cents": -1, "available": 1}, true},
		{map[string]any{"name": "x", "price_cents": 100_000_001, "available": 1}, true},
		{map[string]any{"name": "x", "price_cents": 1, "available": 1_000_000_001}, true},
		{map[string]any{"name": "x", "price_cents": 1}, true},
		{map[string]any{"name": "x", "price_cents": "1", "available": 1}, true},
		{map[string]any{"name": "x", "price_cents": 1, "available": 1, "sold": 3}, true},
		{[]byte(`{"name": "x", "price_cents": 1,`), true},
		{[]byte(`{"name":"x","price_cents":1,"available":1} {}`), false},
	} {
		put(tc.body, 400, tc.docRejects)
	}
	c.send(t, s, base, apiCall{op: "PUT /admin/products/{sku}", path: param("bad sku"), header: auth,
		body: map[string]any{"name": "x", "price_cents": 1, "available": 1}, want: 400, docRejects: true})
	c.send(t, s, base, apiCall{op: "PUT /admin/products/{sku}", path: param(strings.Repeat("a", 65)), header: auth,
		body: map[string]any{"name": "x", "price_cents": 1, "available": 1}, want: 400, docRejects: true})
	huge := append([]byte(`{"name":"`), bytes.Repeat([]byte("x"), 2<<20)...)
	put(append(huge, `","price_cents":1,"available":1}`...), 413, false)
	c.send(t, s, base, apiCall{op: "PUT /admin/products/{sku}", path: param(sk), want: 415, docRejects: true,
		body:   map[string]any{"name": "x", "price_cents": 1, "available": 1},
		header: map[string]string{"Authorization": auth["Authorization"], "Content-Type": "text/plain"}})
	for _, h := range []map[string]string{nil, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + s.AdminToken}} {
		c.send(t, s, base, apiCall{op: "PUT /admin/products/{sku}", path: param(sk), header: h, want: 401,
			body: map[string]any{"name": "x", "price_cents": 1, "available": 1}})
	}

	p := c.send(t, s, base, apiCall{op: "GET /products/{sku}", path: param(sk), want: 200})
	var got struct{ Name string }
	p.Decode(t, &got)
	if got.Name != strings.Repeat("n", 200) {
		t.Errorf("a refused PUT changed the product: %s", p.Body)
	}
	c.send(t, s, base, apiCall{op: "GET /products/{sku}", path: param(sku(t, "missing")), want: 404})
	c.send(t, s, base, apiCall{op: "GET /products/{sku}", path: param("bad sku"), want: 400, docRejects: true})
	c.send(t, s, base, apiCall{op: "GET /products/{sku}", path: param(".dot-first"), want: 400, docRejects: true})

	// Compare-and-set and restock.
	c.send(t, s, base, apiCall{op: "PUT /admin/products/{sku}", path: param(sk), want: 412,
		body:   map[string]any{"name": "x", "price_cents": 1, "available": 1},
		header: map[string]string{"Authorization": auth["Authorization"], "If-Match": `"999999"`}})
	current := c.send(t, s, base, apiCall{op: "GET /products/{sku}", path: param(sk), want: 200}).Header.Get("ETag")
	c.send(t, s, base, apiCall{op: "PUT /admin/products/{sku}", path: param(sk), want: 200,
		body:   map[string]any{"name": "Lamp", "price_cents": 1250, "available": 10},
		header: map[string]string{"Authorization": auth["Authorization"], "If-Match": current}})
	restock := func(sku string, body any, header map[string]string, want int, docRejects bool) {
		t.Helper()
		h := map[string]string{"Authorization": auth["Authorization"]}
		for k, v := range header {
			h[k] = v
		}
		c.send(t, s, base, apiCall{op: "POST /admin/products/{sku}/restock", path: param(sku), body: body,
			header: h, want: want, docRejects: docRejects})
	}
	restock(sk, map[string]any{"delta": 5}, map[string]string{"Idempotency-Key": uuid.NewString()}, 200, false)
	restock(sk, map[string]any{"delta": -3}, nil, 200, false)
	restock(sk, map[string]any{"delta": -1_000_000}, nil, 409, false)
	restock(sku(t, "missing"), map[string]any{"delta": 1}, nil, 404, false)
	restock(sk, map[string]any{"delta": 0}, nil, 400, true)
	restock(sk, map[string]any{}, nil, 400, true)
	restock(sk, map[string]any{"delta": 1, "sku": "x"}, nil, 400, true)
	restock("bad sku", map[string]any{"delta": 1}, nil, 400, true)
	restock(sk, map[string]any{"delta": 1}, map[string]string{"Idempotency-Key": "has space"}, 400, true)
	restock(sk, append(append([]byte(`{"delta":1,"x":"`), bytes.Repeat([]byte("x"), 2<<20)...), `"}`...), nil, 413, false)
	restock(sk, map[string]any{"delta": 1}, map[string]string{"Content-Type": "text/plain"}, 415, true)
	for _, h := range []map[string]string{nil, {"Authorization": "Bearer wrong"}} {
		c.send(t, s, base, apiCall{op: "POST /admin/products/{sku}/restock", path: param(sk), header: h, want: 401,
			body: map[string]any{"delta": 1}})
	}
}

// conformOrders: every order route and every admin route about orders and
// sagas, on orders of every outcome.
func conformOrders(t *testing.T, s *testenv.System, c *conformance) {
	base := s.BaseURL
	auth := map[string]string{"Authorization": "Bearer " + s.AdminToken}
	id := func(v string) map[string]string { return map[string]string{"id": v} }
	sk, short := sku(t, "a"), sku(t, "short")
	s.PutProduct(t, sk, "Pen", 150, 1000)
	s.PutProduct(t, short, "Rare pen", 99_000, 1)

	post := func(body any, header map[string]string, want int, docRejects bool) testenv.Response {
		t.Helper()
		return c.send(t, s, base, apiCall{op: "POST /orders", body: body, header: header, want: want, docRejects: docRejects})
	}
	accepted := func(r testenv.Response) string {
		t.Helper()
		var a struct {
			OrderID string `json:"order_id"`
		}
		r.Decode(t, &a)
		if loc := r.Header.Get("Location"); loc != "/orders/"+a.OrderID {
			t.Errorf("Location %q for order %s", loc, a.OrderID)
		}
		return a.OrderID
	}

	// Idempotency-Key: created, replayed (also for an equal normalised
	// body), refused for another body, bounded in length.
	key := "key-" + uuid.NewString()
	spec := testenv.OrderSpec{Items: testenv.Items(sk, 1)}
	keyed := map[string]string{"Idempotency-Key": key}
	r := post(spec.Body(), keyed, 202, false)
	first := accepted(r)
	if v := r.Header.Values("Idempotent-Replayed"); len(v) > 0 {
		t.Errorf("a new order carries Idempotent-Replayed %q", v)
	}
	same := spec.Body()
	delete(same, "priority")
	same["shipping_address"] = map[string]string{"line1": "1 Main St", "city": "Springfield", "country": " us "}
	for _, body := range []map[string]any{spec.Body(), same} {
		r = post(body, keyed, 202, false)
		if accepted(r) != first || r.Header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("replay: order %s, Idempotent-Replayed %q; want %s, true", accepted(r), r.Header.Get("Idempotent-Replayed"), first)
		}
	}
	post(testenv.OrderSpec{Items: testenv.Items(sk, 2)}.Body(), keyed, 409, false)
	post(spec.Body(), map[string]string{"Idempotency-Key": strings.Repeat("k", 255) + uuid.NewString()[:1]}, 400, true)
	longKey := accepted(post(spec.Body(), map[string]string{"Idempotency-Key": strings.Repeat("k", 254) + uuid.NewString()[:1]}, 202, false))

	// Bad bodies.
	good := func(edit func(map[string]any)) map[string]any {
		b := testenv.OrderSpec{Items: testenv.Items(sk, 1)}.Body()
		edit(b)
		return b
	}
	many := make([]map[string]any, api.MaxItems+1)
	for i := range many {
		many[i] = map[string]any{"sku": sk, "quantity": 1}
	}
	for _, tc := range []struct {
		body       any
		docRejects bool
	}{
		{[]byte(`{"customer_id": "c-1", "items": [`), true},
		{[]byte(`[1, 2]`), true},
		{append(mustJSON(t, good(func(map[string]any) {})), ` {}`...), false},
		{[]byte(`{}`), true},
		{good(func(b map[string]any) { b["amount_cents"] = 1 }), true},
		{good(func(b map[string]any) { delete(b, "customer_id") }), true},
		{good(func(b map[string]any) { b["customer_id"] = " \t " }), true},
		{good(func(b map[string]any) { b["customer_id"] = strings.Repeat("c", 201) }), true},
		{good(func(b map[string]any) { b["customer_id"] = strings.Repeat("é", 201) }), true},
		{good(func(b map[string]any) { b["customer_id"] = "c\x1b1" }), false}, // a control character
		{good(func(b map[string]any) { delete(b, "payment_token") }), true},
		{good(func(b map[string]any) { b["items"] = []any{} }), true},
		{good(func(b map[string]any) { b["items"] = many }), true},
		{good(func(b map[string]any) { b["items"] = []map[string]any{{"sku": sk, "quantity": 0}} }), true},
		{good(func(b map[string]any) { b["items"] = []map[string]any{{"sku": sk, "quantity": api.MaxQuantity + 1}} }), true},
		{good(func(b map[string]any) { b["items"] = []map[string]any{{"sku": sk, "quantity": "2"}} }), true},
		{good(func(b map[string]any) { b["items"] = []map[string]any{{"sku": "no spaces", "quantity": 1}} }), true},
		{good(func(b map[string]any) { b["items"] = []map[string]any{{"sku": sk}} }), true},
		{good(func(b map[string]any) { delete(b, "shipping_address") }), true},
		{good(func(b map[string]any) { b["shipping_address"] = map[string]string{"line1": "x", "city": "y"} }), true},
		{good(func(b map[string]any) {
			b["shipping_address"] = map[string]string{"line1": "x", "city": "y", "country": "USA"}
		}), true},
		{good(func(b map[string]any) {
			b["shipping_address"] = map[string]string{"line1": "", "city": "y", "country": "US"}
		}), true},
		{good(func(b map[string]any) { b["priority"] = "urgent" }), true},
	} {
		post(tc.body, nil, 400, tc.docRejects)
	}
	huge := append([]byte(`{"customer_id":"`), bytes.Repeat([]byte("x"), 2<<20)...)
	post(append(huge, `"}`...), nil, 413, false)
	post(spec.Body(), map[string]string{"Content-Type": "text/plain"}, 415, true)
	post(spec.Body(), map[string]string{"Content-Type": ""}, 415, true)

	// One order of each outcome, and the shapes each gives.
	charset := post(spec.Body(), map[string]string{"Content-Type": "application/json; charset=utf-8"}, 202, false)
	ids := []string{first, longKey, accepted(charset)}
	for _, o := range []testenv.OrderSpec{
		{Items: testenv.Items(sk, 2, sk, 1), Priority: "high", Customer: "c-twice"},
		{Items: testenv.Items(short, 2)},                       // rejected: out of stock
		{Items: testenv.Items(sku(t, "nope"), 1)},              // rejected: unknown sku
		{Items: testenv.Items(sk, 1), Token: "tok_decline"},    // cancelled: declined
		{Items: testenv.Items(sk, 1, short, 1), Country: "ZZ"}, // cancelled: refused by the carrier
	} {
		ids = append(ids, accepted(post(o.Body(), nil, 202, false)))
	}
	noPriority := good(func(b map[string]any) { delete(b, "priority") })
	ids = append(ids, accepted(post(noPriority, nil, 202, false)))
	final := s.WaitTerminal(t, ids, waitFor)
	for _, oid := range ids {
		c.send(t, s, base, apiCall{op: "GET /orders/{id}", path: id(oid), want: 200})
		last := "order." + final[oid].State
		deadline := time.Now().Add(waitFor)
		for {
			var trail struct {
				Events []struct{ Type string } `json:"events"`
			}
			c.send(t, s, base, apiCall{op: "GET /orders/{id}/events", path: id(oid), want: 200}).Decode(t, &trail)
			if n := len(trail.Events); n > 0 && trail.Events[n-1].Type == last || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		c.send(t, s, base, apiCall{op: "GET /admin/orders/{id}/ledger", path: id(oid), header: auth, want: 200})
	}
	if st := final[ids[len(ids)-1]]; st.Priority != "normal" {
		t.Errorf("an order sent without priority has priority %q", st.Priority)
	}

	// Confirmations of receipt: a delivered order (202, no second effect),
	// one rejected or cancelled (409 not_shipped), and their errors.
	for _, oid := range ids {
		want := http.StatusAccepted
		if final[oid].State != "completed" {
			want = http.StatusConflict
		}
		c.send(t, s, base, apiCall{op: "POST /orders/{id}/delivery", path: id(oid), want: want})
	}
	c.send(t, s, base, apiCall{op: "POST /orders/{id}/delivery", path: id("not-a-uuid"), want: 400, docRejects: true})
	c.send(t, s, base, apiCall{op: "POST /orders/{id}/delivery", path: id(uuid.NewString()), want: 404})

	// Reading errors.
	for _, op := range []string{"GET /orders/{id}", "GET /orders/{id}/events"} {
		c.send(t, s, base, apiCall{op: op, path: id("not-a-uuid"), want: 400, docRejects: true})
		c.send(t, s, base, apiCall{op: op, path: id(uuid.NewString()), want: 404})
	}

	// Lists, paged through, and their errors.
	list := func(op string, q url.Values, h map[string]string, want int, docRejects bool) testenv.Response {
		t.Helper()
		return c.send(t, s, base, apiCall{op: op, query: q, header: h, want: want, docRejects: docRejects})
	}
	for _, op := range []struct {
		name string
		h    map[string]string
	}{{"GET /orders", nil}, {"GET /admin/sagas", auth}} {
		list(op.name, nil, op.h, 200, false)
		list(op.name, url.Values{"state": {"completed"}, "limit": {"1"}}, op.h, 200, false)
		var page struct {
			NextCursor *string `json:"next_cursor"`
		}
		q := url.Values{"state": {""}, "limit": {"100"}}
		for range 20 {
			list(op.name, q, op.h, 200, false).Decode(t, &page)
			if page.NextCursor == nil {
				break
			}
			q.Set("cursor", *page.NextCursor)
		}
		for _, q := range []url.Values{
			{"state": {"bogus"}}, {"limit": {"0"}}, {"limit": {"101"}}, {"limit": {"abc"}}, {"cursor": {"xyz"}},
		} {
			list(op.name, q, op.h, 400, true)
		}
	}
	var page struct {
		Orders []struct {
			OrderID string `json:"order_id"`
		} `json:"orders"`
		NextCursor *string `json:"next_cursor"`
	}
	list("GET /orders", url.Values{"limit": {"2"}}, nil, 200, false).Decode(t, &page)
	if len(page.Orders) != 2 || page.NextCursor == nil || *page.NextCursor != page.Orders[1].OrderID {
		t.Errorf("a full page of 2: %+v", page)
	}

	// Admin errors, and every admin operation without the token.
	done := ids[0]
	for _, op := range []string{"POST /admin/sagas/{id}/replay", "POST /admin/sagas/{id}/cancel"} {
		c.send(t, s, base, apiCall{op: op, path: id(done), body: why, header: auth, want: 409})
		c.send(t, s, base, apiCall{op: op, path: id(uuid.NewString()), body: why, header: auth, want: 404})
		c.send(t, s, base, apiCall{op: op, path: id("not-a-uuid"), body: why, header: auth, want: 400, docRejects: true})
		// An action without a reason is refused before anything else.
		c.send(t, s, base, apiCall{op: op, path: id(done), header: auth, want: 400, docRejects: true})
		c.send(t, s, base, apiCall{op: op, path: id(done), body: map[string]any{"reason": " "}, header: auth, want: 400, docRejects: true})
	}
	// adminPost sends an admin POST with the token and any other headers.
	adminPost := func(op string, path map[string]string) func(body any, header map[string]string, want int, docRejects bool) {
		return func(body any, header map[string]string, want int, docRejects bool) {
			t.Helper()
			h := map[string]string{"Authorization": auth["Authorization"]}
			for k, v := range header {
				h[k] = v
			}
			c.send(t, s, base, apiCall{op: op, path: path, body: body, header: h, want: want, docRejects: docRejects})
		}
	}
	tooBig := append(append([]byte(`{"reason":"`), bytes.Repeat([]byte("r"), 2<<20)...), `"}`...)
	cancel := adminPost("POST /admin/sagas/{id}/cancel", id(done))
	cancel(map[string]any{"reason": "customer called"}, nil, 409, false)
	cancel([]byte(`{"reason":`), nil, 400, true)
	cancel(map[string]any{"why": "x"}, nil, 400, true)
	cancel(tooBig, nil, 413, false)
	cancel(map[string]any{"reason": "x"}, map[string]string{"Content-Type": "text/plain"}, 415, true)
	c.send(t, s, base, apiCall{op: "GET /admin/quarantine", header: auth, want: 200})
	// The operators' tools (sagactl's routes).
	for _, op := range []string{"GET /admin/sagas/{id}", "GET /admin/sagas/{id}/events"} {
		c.send(t, s, base, apiCall{op: op, path: id(done), header: auth, want: 200})
		c.send(t, s, base, apiCall{op: op, path: id(uuid.NewString()), header: auth, want: 404})
		c.send(t, s, base, apiCall{op: op, path: id("not-a-uuid"), header: auth, want: 400, docRejects: true})
	}
	bulk := adminPost("POST /admin/replays", nil)
	bulk(map[string]any{"state": "stuck", "older_than": "1h", "reason": "what would it do", "dry_run": true}, nil, 200, false)
	bulk(map[string]any{"state": "stuck", "dry_run": true}, nil, 400, true)
	bulk(map[string]any{"older_than": "a while", "reason": "x", "dry_run": true}, nil, 400, false)
	bulk(map[string]any{"state": "completed", "reason": "x", "dry_run": true}, nil, 400, false)
	bulk(tooBig, nil, 413, false)
	bulk(map[string]any{"reason": "x"}, map[string]string{"Content-Type": "text/plain"}, 415, true)
	c.send(t, s, base, apiCall{op: "GET /admin/dead-letters", header: auth, want: 200})
	c.send(t, s, base, apiCall{op: "GET /admin/dead-letters", query: url.Values{"limit": {"0"}}, header: auth, want: 400, docRejects: true})
	redrive := adminPost("POST /admin/dead-letters/redrive", nil)
	redrive(map[string]any{"message_ids": []string{"no-such-message"}, "reason": "conformance"}, nil, 200, false)
	redrive(map[string]any{"reason": "which ones?"}, nil, 400, false)
	redrive(map[string]any{"all": true}, nil, 400, true)
	redrive(tooBig, nil, 413, false)
	redrive(map[string]any{"reason": "x", "all": true}, map[string]string{"Content-Type": "text/plain"}, 415, true)
	c.send(t, s, base, apiCall{op: "GET /admin/outbox", header: auth, want: 200})
	c.send(t, s, base, apiCall{op: "GET /admin/outbox", query: url.Values{"limit": {"1001"}}, header: auth, want: 400, docRejects: true})
	c.send(t, s, base, apiCall{op: "GET /admin/orders/{id}", path: id(done), header: auth, want: 200})
	c.send(t, s, base, apiCall{op: "GET /admin/orders/{id}", path: id("not-a-uuid"), header: auth, want: 400, docRejects: true})
	c.send(t, s, base, apiCall{op: "GET /admin/orders/{id}", path: id(uuid.NewString()), header: auth, want: 404})
	c.send(t, s, base, apiCall{op: "GET /admin/orders/{id}/ledger", path: id("not-a-uuid"), header: auth, want: 400, docRejects: true})
	c.send(t, s, base, apiCall{op: "GET /admin/orders/{id}/ledger", path: id(uuid.NewString()), header: auth, want: 404})
	for _, op := range adminCalls(done, sku(t, "a")) {
		for _, h := range []map[string]string{nil, {"Authorization": "Bearer " + s.AdminToken + "x"}} {
			op.header, op.want = h, 401
			c.send(t, s, base, op)
		}
	}
}

// why is the body of an operator's action.
var why = map[string]any{"reason": "the conformance test"}

// adminCalls is one valid call of each admin operation.
func adminCalls(orderID, sku string) []apiCall {
	id := map[string]string{"id": orderID}
	return []apiCall{
		{op: "PUT /admin/products/{sku}", path: map[string]string{"sku": sku},
			body: map[string]any{"name": "x", "price_cents": 1, "available": 1}},
		{op: "GET /admin/orders/{id}/ledger", path: id},
		{op: "GET /admin/orders/{id}", path: id},
		{op: "GET /admin/sagas"},
		{op: "POST /admin/sagas/{id}/replay", path: id, body: why},
		{op: "POST /admin/sagas/{id}/cancel", path: id, body: why},
		{op: "GET /admin/quarantine"},
		{op: "POST /admin/products/{sku}/restock", path: map[string]string{"sku": sku}, body: map[string]any{"delta": 1}},
		{op: "GET /admin/sagas/{id}", path: id},
		{op: "GET /admin/sagas/{id}/events", path: id},
		{op: "POST /admin/replays", body: map[string]any{"reason": "x", "dry_run": true}},
		{op: "GET /admin/dead-letters"},
		{op: "POST /admin/dead-letters/redrive", body: map[string]any{"reason": "x", "all": true}},
		{op: "GET /admin/outbox"},
	}
}

// conformOperations: health, readiness and metrics.
func conformOperations(t *testing.T, s *testenv.System, c *conformance) {
	c.send(t, s, s.BaseURL, apiCall{op: "GET /healthz", want: 200})
	c.send(t, s, s.BaseURL, apiCall{op: "GET /readyz", want: 200})
	m := c.send(t, s, s.BaseURL, apiCall{op: "GET /metrics", want: 200})
	if !bytes.Contains(m.Body, []byte("sagaflow_sagas_started_total")) {
		t.Errorf("GET /metrics has no sagaflow_sagas_started_total")
	}
}

// conformDegraded runs a deployment of its own with no worker (requests
// relayed to workers time out: 503), a second orchestrator without
// ADMIN_TOKEN (403), and a third that reaches PostgreSQL through a proxy
// the test takes down (503), without stopping any server. With
// MAX_ACTIVE_SAGAS=1 and the first order never answered, later orders
// stay pending: the admin routes then have sagas to cancel and replay.
// A compensation gets one attempt of 1s, so a cancelled order is soon
// stuck; a step gets 30, so an order is not compensated on its own while
// the test runs.
func conformDegraded(t *testing.T, c *conformance) {
	p := testenv.StartT(t, testenv.Options{
		Services: []string{"orchestrator"},
		Env: map[string]string{
			"RPC_TIMEOUT": "300ms", "MAX_ACTIVE_SAGAS": "1", "PRODUCT_RATE": "0.1", "PRODUCT_BURST": "1",
			"STEP_TIMEOUT": "1s", "STEP_MAX_TIMEOUT": "1s", "STEP_ATTEMPTS": "30", "COMPENSATION_ATTEMPTS": "1",
		},
	})
	base := p.BaseURL
	auth := map[string]string{"Authorization": "Bearer " + p.AdminToken}
	id := func(v string) map[string]string { return map[string]string{"id": v} }
	product := map[string]string{"sku": "sku-degraded"}
	place := func(base string, want int) string {
		t.Helper()
		r := c.send(t, p, base, apiCall{op: "POST /orders", want: want,
			body: testenv.OrderSpec{Items: testenv.Items("sku-degraded", 1)}.Body()})
		var a struct {
			OrderID string `json:"order_id"`
			State   string `json:"state"`
		}
		if want == http.StatusAccepted {
			r.Decode(t, &a)
		}
		return a.OrderID
	}

	// No worker answers.
	c.send(t, p, base, apiCall{op: "GET /products/{sku}", path: product, want: 503})
	c.send(t, p, base, apiCall{op: "GET /products/{sku}", path: product, want: 429})
	c.send(t, p, base, apiCall{op: "PUT /admin/products/{sku}", path: product, header: auth, want: 503,
		body: map[string]any{"name": "x", "price_cents": 1, "available": 1}})
	c.send(t, p, base, apiCall{op: "POST /admin/products/{sku}/restock", path: product, header: auth, want: 503,
		body: map[string]any{"delta": 1}})
	running := place(base, 202)
	c.send(t, p, base, apiCall{op: "GET /orders/{id}/events", path: id(running), want: 503})
	c.send(t, p, base, apiCall{op: "POST /orders/{id}/delivery", path: id(running), want: 503})
	// No worker: the ledger says so, service by service.
	var l api.Ledger
	c.send(t, p, base, apiCall{op: "GET /admin/orders/{id}/ledger", path: id(running), header: auth, want: 200}).Decode(t, &l)
	if len(l.Unanswered) != 3 || l.Payment != nil {
		t.Errorf("ledger with no worker: %+v, want every service unanswered", l)
	}

	// Every orchestrator's estimate of the sagas in flight is refreshed
	// within a second: after that, new orders wait as pending.
	time.Sleep(1200 * time.Millisecond)
	pending1, pending2 := place(base, 202), place(base, 202)
	c.send(t, p, base, apiCall{op: "GET /orders/{id}", path: id(pending1), want: 200})
	c.send(t, p, base, apiCall{op: "GET /admin/sagas", query: url.Values{"state": {""}}, header: auth, want: 200})
	c.send(t, p, base, apiCall{op: "POST /admin/sagas/{id}/cancel", path: id(pending1), header: auth, want: 200,
		body: map[string]any{"reason": "customer called"}})
	c.send(t, p, base, apiCall{op: "POST /admin/sagas/{id}/replay", body: why, path: id(pending2), header: auth, want: 200})
	c.send(t, p, base, apiCall{op: "POST /admin/sagas/{id}/cancel", body: why, path: id(running), header: auth, want: 200})
	c.send(t, p, base, apiCall{op: "POST /admin/sagas/{id}/cancel", body: why, path: id(running), header: auth, want: 409})
	// Its release_stock is never answered: the order is stuck.
	type listed struct {
		SagaID  string `json:"saga_id"`
		StuckIn string `json:"stuck_in"`
	}
	for deadline := time.Now().Add(waitFor); ; {
		var list struct {
			Sagas []listed `json:"sagas"`
		}
		c.send(t, p, base, apiCall{op: "GET /admin/sagas", header: auth, want: 200}).Decode(t, &list)
		if slices.Contains(list.Sagas, listed{running, string(saga.Compensating)}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("order %s never stuck compensating", running)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.send(t, p, base, apiCall{op: "GET /orders/{id}", path: id(running), want: 200})
	c.send(t, p, base, apiCall{op: "POST /admin/sagas/{id}/replay", body: why, path: id(running), header: auth, want: 200})
	for _, oid := range []string{running, pending1, pending2} {
		c.send(t, p, base, apiCall{op: "GET /orders/{id}", path: id(oid), want: 200})
	}
	c.send(t, p, base, apiCall{op: "GET /admin/sagas", query: url.Values{"state": {""}}, header: auth, want: 200})

	// No ADMIN_TOKEN: every admin route is off, whatever the request carries.
	noToken := startOrchestrator(t, p, "orchestrator-2", map[string]string{"ADMIN_TOKEN": ""})
	for _, op := range adminCalls(running, "sku-degraded") {
		for _, h := range []map[string]string{nil, auth} {
			op.header, op.want = h, 403
			c.send(t, p, noToken, op)
		}
	}

	// PostgreSQL unreachable.
	dbURL, err := url.Parse(p.DBURL)
	if err != nil || dbURL.Host == "" {
		t.Fatalf("DBURL %q is not a URL with a host: %v", p.DBURL, err)
	}
	target := dbURL.Host
	if dbURL.Port() == "" {
		target += ":5432"
	}
	proxy := startTCPProxy(t, target)
	proxied := *dbURL
	proxied.Host = proxy.Addr()
	o3 := startOrchestrator(t, p, "orchestrator-3", map[string]string{"DATABASE_URL": proxied.String()})
	c.send(t, p, o3, apiCall{op: "GET /readyz", want: 200})
	proxy.Down()
	t.Cleanup(func() { _, _ = p.Kill("orchestrator-3", syscall.SIGKILL) })
	c.send(t, p, o3, apiCall{op: "GET /readyz", want: 503})
	c.send(t, p, o3, apiCall{op: "GET /healthz", want: 200})
	place(o3, 503)
	c.send(t, p, o3, apiCall{op: "GET /orders", want: 503})
	c.send(t, p, o3, apiCall{op: "GET /admin/quarantine", header: auth, want: 503})
	c.send(t, p, o3, apiCall{op: "GET /admin/orders/{id}/ledger", path: id(running), header: auth, want: 503})
	c.send(t, p, o3, apiCall{op: "GET /admin/orders/{id}", path: id(running), header: auth, want: 503})
	c.send(t, p, o3, apiCall{op: "GET /orders/{id}", path: id(running), want: 503})
	c.send(t, p, o3, apiCall{op: "GET /orders/{id}/events", path: id(running), want: 503})
	c.send(t, p, o3, apiCall{op: "GET /admin/orders/{id}/ledger", path: id(running), header: auth, want: 503})
	c.send(t, p, o3, apiCall{op: "GET /admin/sagas", header: auth, want: 503})
	c.send(t, p, o3, apiCall{op: "POST /admin/sagas/{id}/replay", body: why, path: id(running), header: auth, want: 503})
	c.send(t, p, o3, apiCall{op: "POST /admin/sagas/{id}/cancel", body: why, path: id(running), header: auth, want: 503})
	c.send(t, p, o3, apiCall{op: "GET /admin/sagas/{id}", path: id(running), header: auth, want: 503})
	c.send(t, p, o3, apiCall{op: "GET /admin/sagas/{id}/events", path: id(running), header: auth, want: 503})
	c.send(t, p, o3, apiCall{op: "POST /admin/replays", body: map[string]any{"reason": "x", "dry_run": true}, header: auth, want: 503})
	c.send(t, p, o3, apiCall{op: "GET /admin/outbox", header: auth, want: 503})
}

// startOrchestrator starts one more orchestrator in s with extra
// environment, waits until it is ready, and returns its base URL.
func startOrchestrator(t *testing.T, s *testenv.System, name string, env map[string]string) string {
	t.Helper()
	if err := s.StartService(name, env); err != nil {
		t.Fatal(err)
	}
	base := s.API(name)
	deadline := time.Now().Add(waitFor)
	for {
		r, err := testenv.Request(s.HTTP, base, http.MethodGet, "/readyz", nil, nil)
		if err == nil && r.Status == http.StatusOK {
			return base
		}
		if !s.Running(name) || time.Now().After(deadline) {
			t.Fatalf("%s is not ready (%v, %d):\n%s", name, err, r.Status, s.Logs(name, 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tcpProxy forwards connections on a loopback port to a target until it
// is taken down: a way to cut one process off PostgreSQL while the server
// runs on.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]struct{}
}

func startTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve()
	t.Cleanup(p.Down)
	return p
}

// Addr is the proxy's host:port.
func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return // taken down
		}
		go p.pipe(in)
	}
}

func (p *tcpProxy) pipe(in net.Conn) {
	out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		in.Close()
		return
	}
	p.mu.Lock()
	if p.down {
		p.mu.Unlock()
		in.Close()
		out.Close()
		return
	}
	p.conns[in], p.conns[out] = struct{}{}, struct{}{}
	p.mu.Unlock()
	go func() { _, _ = io.Copy(out, in); out.Close(); in.Close() }()
	_, _ = io.Copy(in, out)
	in.Close()
	out.Close()
}

// Down stops accepting and cuts every forwarded connection.
func (p *tcpProxy) Down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return
	}
	p.down = true
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// trunc shortens a body for a failure message.
func trunc(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "..."
	}
	return string(b)
}

// sameSet reports whether a and b hold the same strings, as many times.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
