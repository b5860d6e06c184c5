// Command testreport runs `go test -json ...` and shows each top-level test
// as it finishes (go test ./... without -json shows a package's tests only
// when the whole package is done), with the output of those that fail; it
// writes go test's usual -v text to a log file and ends with the summary
// `make test` has always printed. See Report for how tests are counted.
//
//	testreport [-log FILE] [-append] [-label LABEL] [-counts FILE] -- go test -json ./... [flags]
//
// It exits 0 only when go test did and no test failed or was skipped.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("testreport", flag.ContinueOnError)
	fs.SetOutput(stderr)
	logName := fs.String("log", os.DevNull, "write go test's -v text to `file`")
	appendLog := fs.Bool("append", false, "append to the log instead of replacing it")
	label := fs.String("label", "", "put `text` before the summary's counts")
	counts := fs.String("counts", "", "append \"passed failed\" to `file` at the end")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: testreport [flags] -- go test -json ...")
		return 2
	}
	mode := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if *appendLog {
		mode = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	log, err := os.OpenFile(*logName, mode, 0o644)
	if err != nil {
		fmt.Fprintln(stderr, "testreport:", err)
		return 2
	}
	defer log.Close()
	if *label != "" {
		fmt.Fprintf(log, "=== testreport: %s: %s\n", *label, strings.Join(fs.Args(), " "))
	}

	r := NewReport(stdout, log, modulePath("go.mod"))
	code := runCommand(fs.Args(), r.Line, stderr)
	ok := r.Finish(code, *label, *logName)
	if *counts != "" {
		if err := appendCounts(*counts, r.Passed, r.Failed); err != nil {
			fmt.Fprintln(stderr, "testreport:", err)
			return 2
		}
	}
	switch {
	case code > 0:
		return code
	case code < 0 || !ok:
		return 1
	}
	return 0
}

// runCommand runs argv with its stdout and stderr, merged, fed line by line
// to line, and returns its exit code (-1 and a message when it could not
// run). An interrupt or termination is passed on to it, and the report
// still ends with what it printed until it stopped.
func runCommand(argv []string, line func([]byte), stderr io.Writer) int {
	pr, pw, err := os.Pipe()
	if err != nil {
		fmt.Fprintln(stderr, "testreport:", err)
		return -1
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = pw, pw
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		fmt.Fprintln(stderr, "testreport:", err)
		return -1
	}
	pw.Close()
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 0, 64*1024), 64*1024*1024)
	for sc.Scan() {
		line(sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(stderr, "testreport: reading go test's output:", err)
		_, _ = io.Copy(io.Discard, pr)
	}
	pr.Close()
	err = cmd.Wait()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && exit.ExitCode() > 0:
		return exit.ExitCode()
	default:
		fmt.Fprintln(stderr, "testreport:", err)
		return -1
	}
}

// modulePath is the module path in the go.mod at name, or "".
func modulePath(name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

func appendCounts(name string, passed, failed int) error {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(f, "%d %d\n", passed, failed); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
