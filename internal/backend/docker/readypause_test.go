package docker

import (
	"testing"
	"time"
)

// The pause stays the configured one while a quiet machine would still be
// initialising, then grows with the wait up to its cap; a configured pause
// above the cap is kept. Counting the attempts of a 20 s wait shows what
// the growth saves.
func TestReadyPause(t *testing.T) {
	base := 20 * time.Millisecond
	for _, c := range []struct {
		base, waited, want time.Duration
	}{
		{base, 0, base},
		{base, readyFastFor, base},
		{base, readyFastFor + time.Second, base + 50*time.Millisecond},
		{base, readyFastFor + 3*time.Second, base + 150*time.Millisecond},
		{base, time.Minute, readyPauseMax},
		{time.Second, time.Minute, time.Second},
	} {
		if got := readyPause(c.base, c.waited); got != c.want {
			t.Errorf("readyPause(%s, %s) = %s, want %s", c.base, c.waited, got, c.want)
		}
	}
	attempts := func(wait time.Duration) int {
		n := 0
		for waited := time.Duration(0); waited < wait; waited += readyPause(base, waited) {
			n++
		}
		return n
	}
	quiet, loaded := attempts(2*time.Second), attempts(20*time.Second)
	t.Logf("attempts: %d in a 2 s wait, %d in a 20 s wait (%d at a constant %s)", quiet, loaded, int(20*time.Second/base), base)
	if quiet < 80 || loaded > 200 {
		t.Errorf("attempts: %d in a 2 s wait (want the fast pace: at least 80), %d in a 20 s wait (want at most 200)", quiet, loaded)
	}
}
