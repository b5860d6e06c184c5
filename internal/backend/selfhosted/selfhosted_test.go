package selfhosted

import (
	"strings"
	"testing"
	"time"
)

func TestRedact(t *testing.T) {
	in := "psql:<stdin>:9: ERROR:  bad\nLINE 1: CREATE ROLE x PASSWORD 'SCRAM-SHA-256$4096:abc...\nsecret-pw here"
	got := Redact(in, "secret-pw")
	if strings.Contains(got, "SCRAM") || strings.Contains(got, "secret-pw") || !strings.Contains(got, "ERROR:  bad") {
		t.Errorf("Redact = %q", got)
	}
}

func TestParseExpires(t *testing.T) {
	got, ok := parseExpires("noise\n" + expiresTag + "2026-11-27T01:02:03.456789Z\n")
	want := time.Date(2026, 11, 27, 1, 2, 3, 456789000, time.UTC)
	if !ok || !got.Equal(want) {
		t.Errorf("parseExpires = %v, %v; want %v", got, ok, want)
	}
	if _, ok := parseExpires("no tagged line\n"); ok {
		t.Error("parseExpires found an expiry in output without one")
	}
}
