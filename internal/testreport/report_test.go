package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The fixture module (testdata/fixture) has one test of each kind: a pass,
// a failure, a skip, a skipped subtest under a passing test, a panic, a
// package that does not compile and a test that hangs past -timeout. This
// runs real `go test -json` on it, as make test does on the project.
func TestRunOnRealGoTest(t *testing.T) {
	dir := t.TempDir()
	logName, countsName := filepath.Join(dir, "test.log"), filepath.Join(dir, "counts")
	if err := os.WriteFile(countsName, []byte("7 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := run([]string{"-log", logName, "-label", "fixture run", "-counts", countsName, "--",
		"go", "-C", "testdata/fixture", "test", "-json", "-count=1", "-timeout", "3s", "./..."}, &out, &errOut)
	got := out.String()
	t.Logf("stdout:\n%s\nstderr:\n%s", got, errOut.String())
	if code != 1 {
		t.Errorf("exit code %d, want go test's 1", code)
	}
	for _, want := range []string{
		`(?m)^PASS example\.com/fixture\.TestPass \d+\.\ds$`,
		`(?m)^PASS example\.com/fixture\.TestSubSkip \d+\.\ds$`,
		`(?m)^PASS example\.com/fixture/hangs\.TestQuick \d+\.\ds$`,
		// A failure shows the test's output, indented.
		`(?m)^FAIL example\.com/fixture\.TestFail \d+\.\ds\n(    .*\n)*    .*the reason it failed\n`,
		`(?m)^SKIP example\.com/fixture\.TestSkip: a skipped test counts as failed\n(    .*\n)*    .*skipped for a reason\n`,
		// A skipped subtest shows its own reason, not its sibling's output.
		`(?m)^SKIP example\.com/fixture\.TestSubSkip/b: a skipped test counts as failed\n    .*the subtest's reason\n {8}--- SKIP: TestSubSkip/b`,
		`(?m)^FAIL example\.com/fixture/panics\.TestPanics \d+\.\ds\n(    .*\n)*    panic: boom`,
		`(?m)^FAIL example\.com/fixture/hangs\.TestHangs: did not finish$`,
		`(?m)^FAIL example\.com/fixture/broken: the package failed without a failing test`,
		// The compiler's message is shown.
		`cannot use "not an int"`,
		`(?m)^ERROR: 2 test\(s\) skipped; a skipped test counts as a failure:\n  example\.com/fixture\.TestSkip\n  example\.com/fixture\.TestSubSkip/b\n`,
	} {
		if !regexp.MustCompile(want).MatchString(got) {
			t.Errorf("stdout does not match %s", want)
		}
	}
	if strings.Contains(got, "TestNeverRuns") {
		t.Errorf("a test that never started is reported")
	}
	// Passed: TestPass, TestSubSkip, TestQuick. Failed: TestFail, TestSkip,
	// TestSubSkip/b, TestPanics, TestHangs, the broken package.
	if last := lastLine(got); last != "fixture run: 3 passed, 6 failed" {
		t.Errorf("last line %q", last)
	}
	counts, _ := os.ReadFile(countsName)
	if string(counts) != "7 1\n3 6\n" {
		t.Errorf("counts file %q, want a line appended", counts)
	}
	log, _ := os.ReadFile(logName)
	for _, want := range []string{"=== testreport: fixture run: go -C testdata/fixture", "--- FAIL: TestFail", "--- SKIP: TestSkip",
		"    --- SKIP: TestSubSkip/b", "panic: test timed out after 3s", "FAIL\texample.com/fixture/broken [build failed]"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// feed runs lines through a Report, then Finish with exit code.
func feed(exitCode int, lines ...string) (out, log string, ok bool) {
	var o, l bytes.Buffer
	r := NewReport(&o, &l, "example.com/m")
	for _, s := range lines {
		r.Line([]byte(s))
	}
	ok = r.Finish(exitCode, "", "the.log")
	return o.String(), l.String(), ok
}

func TestAllPass(t *testing.T) {
	out, log, ok := feed(0,
		`{"Action":"start","Package":"example.com/m/a"}`,
		`{"Action":"run","Package":"example.com/m/a","Test":"TestX"}`,
		`{"Action":"output","Package":"example.com/m/a","Test":"TestX","Output":"=== RUN   TestX\n"}`,
		`{"Action":"output","Package":"example.com/m/a","Test":"TestX","Output":"--- PASS: TestX (1.25s)\n"}`,
		`{"Action":"pass","Package":"example.com/m/a","Test":"TestX","Elapsed":1.25}`,
		`{"Action":"output","Package":"example.com/m/a","Output":"ok  \texample.com/m/a\t1.3s\n"}`,
		`{"Action":"pass","Package":"example.com/m/a","Elapsed":1.3}`,
		`{"Action":"start","Package":"example.com/m/b"}`,
		`{"Action":"output","Package":"example.com/m/b","Output":"?   \texample.com/m/b\t[no test files]\n"}`,
		`{"Action":"skip","Package":"example.com/m/b","Elapsed":0}`,
	)
	if !ok || out != "PASS a.TestX 1.2s\n\n1 passed, 0 failed\n" {
		t.Errorf("ok=%v, out:\n%s", ok, out)
	}
	if log != "=== RUN   TestX\n--- PASS: TestX (1.25s)\nok  \texample.com/m/a\t1.3s\n?   \texample.com/m/b\t[no test files]\n" {
		t.Errorf("log:\n%s", log)
	}
}

// go test failing with nothing failed (say the binary was killed) is a
// failure that counts once.
func TestExitWithoutAFailingTest(t *testing.T) {
	out, _, ok := feed(2,
		`go: something went wrong`,
		`{"Action":"run","Package":"example.com/m/a","Test":"TestX"}`,
		`{"Action":"pass","Package":"example.com/m/a","Test":"TestX","Elapsed":0.5}`,
	)
	if ok {
		t.Error("ok after exit code 2")
	}
	for _, want := range []string{"go: something went wrong\n", "ERROR: go test exited 2 without a failing test (build error, panic or timeout?): see the.log\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("out lacks %q:\n%s", want, out)
		}
	}
	if last := lastLine(out); last != "1 passed, 1 failed" {
		t.Errorf("last line %q", last)
	}
}

// A skip alone fails the run even when go test exits 0.
func TestSkipFailsTheRun(t *testing.T) {
	out, _, ok := feed(0,
		`{"Action":"run","Package":"example.com/m/a","Test":"TestX"}`,
		`{"Action":"output","Package":"example.com/m/a","Test":"TestX","Output":"    x_test.go:9: no server\n"}`,
		`{"Action":"skip","Package":"example.com/m/a","Test":"TestX","Elapsed":0}`,
		`{"Action":"pass","Package":"example.com/m/a","Elapsed":0.1}`,
	)
	if ok || lastLine(out) != "0 passed, 1 failed" || !strings.Contains(out, "SKIP a.TestX: a skipped test counts as failed\n        x_test.go:9: no server\n") {
		t.Errorf("ok=%v, out:\n%s", ok, out)
	}
}

// A stream cut short (go test killed) leaves running tests: failed.
func TestStreamCutShort(t *testing.T) {
	out, _, ok := feed(-1,
		`{"Action":"run","Package":"example.com/m/a","Test":"TestX"}`,
		`{"Action":"output","Package":"example.com/m/a","Test":"TestX","Output":"=== RUN   TestX\n"}`,
	)
	if ok || !strings.Contains(out, "FAIL a.TestX: did not finish\n    === RUN   TestX\n") || lastLine(out) != "0 passed, 1 failed" {
		t.Errorf("ok=%v, out:\n%s", ok, out)
	}
}

// A run of no test at all (a -run that matches nothing) proves nothing.
func TestNoTestRan(t *testing.T) {
	out, _, ok := feed(0,
		`{"Action":"start","Package":"example.com/m/a"}`,
		`{"Action":"output","Package":"example.com/m/a","Output":"testing: warning: no tests to run\n"}`,
		`{"Action":"pass","Package":"example.com/m/a","Elapsed":0.1}`,
	)
	if ok || !strings.Contains(out, "ERROR: no test ran") || lastLine(out) != "0 passed, 1 failed" {
		t.Errorf("ok=%v, out:\n%s", ok, out)
	}
}

func TestCommandThatDoesNotStart(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run([]string{"--", filepath.Join(t.TempDir(), "no-such-command")}, &out, &errOut)
	if code == 0 || lastLine(out.String()) != "0 passed, 1 failed" || !strings.Contains(errOut.String(), "no-such-command") {
		t.Errorf("code %d, out:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
}

func TestModulePath(t *testing.T) {
	if got := modulePath("testdata/fixture/go.mod"); got != "example.com/fixture" {
		t.Errorf("modulePath = %q", got)
	}
	if got := modulePath("testdata/none"); got != "" {
		t.Errorf("modulePath of a missing file = %q", got)
	}
}
