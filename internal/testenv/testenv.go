// Package testenv holds what tests share about the test environment that
// .ci/testenv.sh sets up.
package testenv

import (
	"os"
	"testing"
)

// Main runs a package's tests with the test environment's ssh client first
// on PATH: the provider reaches ssh:// engines by running `ssh`, and the
// environment's own `ssh` reads only its own client configuration (its host
// alias and keys), so that nothing of the user's ~/.ssh is read or edited.
func Main(m *testing.M) {
	if dir := os.Getenv("POSTGRAAS_TEST_SSH_PATH"); dir != "" {
		_ = os.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	}
	os.Exit(m.Run())
}
