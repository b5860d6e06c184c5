package pgsql

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestTempRoleName(t *testing.T) {
	for _, owner := range []string{"app", strings.Repeat("x", 42), strings.Repeat("x", 63), strings.Repeat("é", 31), "a" + strings.Repeat("ü", 30)} {
		n := NewTempRoleName(owner)
		if len(n) > maxRoleLen {
			t.Errorf("%q: %d bytes, more than %d", n, len(n), maxRoleLen)
		}
		if !utf8.ValidString(n) {
			t.Errorf("%q: the owner's name was cut inside a character", n)
		}
		// The random part is whole, the rest comes from the owner.
		i := strings.LastIndex(n, "_tmp_")
		if i < 1 || len(n)-i != len("_tmp_")+16 || !strings.HasPrefix(owner, n[:i]) {
			t.Errorf("%q is not <start of %q>_tmp_<16 hex digits>", n, owner)
		}
		if !IsTempRoleOf(owner, n) {
			t.Errorf("IsTempRoleOf(%q, %q) = false", owner, n)
		}
		if n == NewTempRoleName(owner) {
			t.Errorf("two names alike: %q", n)
		}
	}
	if TempRolePrefix(strings.Repeat("x", 42)) != strings.Repeat("x", 42) || TempRolePrefix(strings.Repeat("x", 43)) != strings.Repeat("x", 42) {
		t.Error("owners of up to 42 bytes are kept whole, longer ones cut to 42")
	}
	for name, want := range map[string]bool{
		"app_tmp_00112233aabbccdd":  true,
		"app_tmp_00112233aabbccd":   false, // short
		"app_tmp_00112233aabbccddx": false,
		"app_tmp_00112233AABBCCDD":  false,
		"apx_tmp_00112233aabbccdd":  false,
		"app":                       false,
		"app_tmp_":                  false,
	} {
		if got := IsTempRoleOf("app", name); got != want {
			t.Errorf("IsTempRoleOf(app, %q) = %v, want %v", name, got, want)
		}
	}
}

func TestNewTempPassword(t *testing.T) {
	p := NewTempPassword()
	if len(p) != 32 || p == NewTempPassword() || !PasswordIsNormalized(p) {
		t.Errorf("NewTempPassword() = %q", p)
	}
}
