package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json), and of the build
// events `go test -json` adds (Action build-output / build-fail, with
// ImportPath instead of Package).
type event struct {
	Action     string
	Package    string
	Test       string
	Elapsed    float64
	Output     string
	ImportPath string
}

// test is a top-level test that has started and not finished yet.
type test struct {
	name   string          // as shown: short package path + "." + test name
	output strings.Builder // its own output and its subtests'
	own    map[string]*strings.Builder
}

// pkgState is what the report keeps of one package under test.
type pkgState struct {
	failed  bool            // a test of the package failed (or was skipped)
	running map[string]bool // top-level tests started and not finished
	output  strings.Builder // output not attributed to a test
}

// Report reads `go test -json` and writes, to out, a line per finished
// top-level test (PASS, FAIL with the test's output, SKIP with its reason),
// and to log the plain `go test -v` text.
//
// Counting, as `make test` has always counted: passed and failed are
// top-level tests; every skipped test, top-level or not, counts as failed
// (a skipped test proves nothing); a package that fails without a failing
// test (build error, panic, timeout) counts as one failed, and so does each
// of its tests that never finished; so does a run in which no test ran.
type Report struct {
	out, log io.Writer
	trim     string // module path + "/", cut from package paths in out

	Passed, Failed int
	Skipped        []string // names of skipped tests, as "pkg.Test/sub"

	pkgs  map[string]*pkgState
	tests map[string]*test // by pkg + " " + top-level name
}

// NewReport writes to out and log; module (may be empty) is cut from the
// package paths it shows.
func NewReport(out, log io.Writer, module string) *Report {
	r := &Report{out: out, log: log, pkgs: map[string]*pkgState{}, tests: map[string]*test{}}
	if module != "" {
		r.trim = module + "/"
	}
	return r
}

// Line handles one line of go test's output (without its newline). A line
// that is not a JSON event (go's own messages) is shown and logged as it is.
func (r *Report) Line(line []byte) {
	var e event
	if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil || e.Action == "" {
		fmt.Fprintf(r.out, "%s\n", line)
		fmt.Fprintf(r.log, "%s\n", line)
		return
	}
	r.event(e)
}

func (r *Report) pkg(name string) *pkgState {
	p := r.pkgs[name]
	if p == nil {
		p = &pkgState{running: map[string]bool{}}
		r.pkgs[name] = p
	}
	return p
}

// write copies text to the log or the terminal; a write that fails there
// cannot be reported anywhere better, and the counts still decide.
func (r *Report) write(w io.Writer, text string) { _, _ = io.WriteString(w, text) }

func (r *Report) event(e event) {
	switch e.Action {
	case "build-output":
		// Compiler messages: shown at once, they explain the failure that
		// follows.
		r.write(r.log, e.Output)
		r.write(r.out, e.Output)
		return
	case "build-fail":
		return
	}
	if depth := strings.Count(e.Test, "/"); depth > 0 && strings.HasPrefix(e.Output, "--- ") {
		// -json drops the indentation go test -v gives a subtest's result
		// line; the log keeps the -v text.
		e.Output = strings.Repeat("    ", depth) + e.Output
	}
	r.write(r.log, e.Output)
	if e.Package == "" {
		return
	}
	p := r.pkg(e.Package)
	if e.Test == "" {
		r.packageEvent(e, p)
		return
	}
	top, _, sub := strings.Cut(e.Test, "/")
	key := e.Package + " " + top
	t := r.tests[key]
	if t == nil {
		t = &test{name: r.short(e.Package) + "." + top, own: map[string]*strings.Builder{}}
		r.tests[key] = t
		p.running[top] = true
	}
	t.output.WriteString(e.Output)
	own := t.own[e.Test]
	if own == nil {
		own = &strings.Builder{}
		t.own[e.Test] = own
	}
	own.WriteString(e.Output)
	name := r.short(e.Package) + "." + e.Test
	if e.Action != "pass" && e.Action != "fail" && e.Action != "skip" || sub && e.Action != "skip" {
		return
	}
	if !sub {
		delete(r.tests, key)
		delete(p.running, top)
	}
	switch e.Action {
	case "pass":
		r.Passed++
		fmt.Fprintf(r.out, "PASS %s %.1fs\n", name, e.Elapsed)
	case "fail":
		r.Failed++
		p.failed = true
		fmt.Fprintf(r.out, "FAIL %s %.1fs\n%s", name, e.Elapsed, indent(t.output.String()))
	case "skip":
		r.Skipped = append(r.Skipped, name)
		r.Failed++
		p.failed = true
		fmt.Fprintf(r.out, "SKIP %s: a skipped test counts as failed\n%s", name, indent(skipReason(own.String(), e.Test)))
	}
}

// packageEvent handles the end of a package's run: a failure without a
// failing test is reported, with the package's own output, and tests that
// never finished count as failed.
func (r *Report) packageEvent(e event, p *pkgState) {
	p.output.WriteString(e.Output)
	if e.Action != "pass" && e.Action != "fail" {
		return
	}
	for top := range p.running {
		key := e.Package + " " + top
		r.Failed++
		p.failed = true
		fmt.Fprintf(r.out, "FAIL %s: did not finish\n%s", r.tests[key].name, indent(r.tests[key].output.String()))
		delete(r.tests, key)
	}
	clear(p.running)
	if e.Action == "fail" && !p.failed {
		r.Failed++
		fmt.Fprintf(r.out, "FAIL %s: the package failed without a failing test (build error, panic or timeout?)\n%s",
			r.short(e.Package), indent(head(p.output.String(), 40)))
	}
}

// Finish reports the go test exit code (0 when it succeeded) and writes the
// summary: the skipped tests, and "label: N passed, N failed". It returns
// whether everything passed.
func (r *Report) Finish(exitCode int, label, logName string) bool {
	for _, t := range r.tests { // only when the stream was cut short
		r.Failed++
		fmt.Fprintf(r.out, "FAIL %s: did not finish\n%s", t.name, indent(t.output.String()))
	}
	fmt.Fprintln(r.out)
	if len(r.Skipped) > 0 {
		fmt.Fprintf(r.out, "ERROR: %d test(s) skipped; a skipped test counts as a failure:\n", len(r.Skipped))
		for _, s := range r.Skipped {
			fmt.Fprintf(r.out, "  %s\n", s)
		}
	}
	if exitCode != 0 && r.Failed == 0 {
		fmt.Fprintf(r.out, "ERROR: go test exited %d without a failing test (build error, panic or timeout?): see %s\n", exitCode, logName)
		r.Failed = 1
	}
	if r.Passed+r.Failed == 0 {
		fmt.Fprintln(r.out, "ERROR: no test ran (a -run pattern that matches nothing?); that counts as a failure")
		r.Failed = 1
	}
	summary := fmt.Sprintf("%d passed, %d failed", r.Passed, r.Failed)
	if label != "" {
		summary = label + ": " + summary
	}
	fmt.Fprintln(r.out, summary)
	return exitCode == 0 && r.Failed == 0
}

// short is a package path without the module's.
func (r *Report) short(pkg string) string {
	if r.trim != "" && strings.HasPrefix(pkg, r.trim) {
		return strings.TrimPrefix(pkg, r.trim)
	}
	return pkg
}

// skipReason is the lines a skipped test logged (its t.Skip message among
// them), without the framework's RUN/PAUSE/CONT lines.
func skipReason(output, name string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(output, "\n") {
		trimmed := strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(trimmed, "=== ") && strings.HasSuffix(trimmed, " "+name) {
			continue
		}
		b.WriteString(l)
	}
	return b.String()
}

// head is the first n lines of s, and how many more there were.
func head(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) <= n+1 {
		return s
	}
	return strings.Join(lines[:n], "") + fmt.Sprintf("... (%d more lines in the log)\n", len(lines)-n-1)
}

// indent puts four spaces before each line of s, so that a test's output
// stands apart from the result lines.
func indent(s string) string {
	if s == "" {
		return ""
	}
	var b bytes.Buffer
	for _, l := range strings.SplitAfter(strings.TrimSuffix(s, "\n"), "\n") {
		b.WriteString("    ")
		b.WriteString(l)
	}
	b.WriteString("\n")
	return b.String()
}
