//go:build faultinject

// Package faultinject lets tests stop the provider at a named point inside
// an operation, so that a kill (SIGKILL, SIGTERM) lands there every time
// instead of by luck. It is compiled in only with the faultinject build tag;
// release builds carry the no-op in noop.go.
//
// With POSTGRAAS_FAULT_PAUSE set to a point's name, the first goroutine that
// reaches that point writes the process id to
// $POSTGRAAS_FAULT_DIR/<point>.pid and blocks until its context ends.
package faultinject

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// Enabled reports whether the hooks are compiled in.
const Enabled = true

var once sync.Map

// Pause blocks at point when the environment asks for it.
func Pause(ctx context.Context, point string) {
	if os.Getenv("POSTGRAAS_FAULT_PAUSE") != point {
		return
	}
	if _, loaded := once.LoadOrStore(point, true); loaded {
		return
	}
	dir := os.Getenv("POSTGRAAS_FAULT_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	f := filepath.Join(dir, point+".pid")
	// Written under a temporary name and renamed, so a reader never sees a
	// half-written pid.
	tmp := f + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())), 0o600); err == nil {
		_ = os.Rename(tmp, f)
	}
	<-ctx.Done()
}
