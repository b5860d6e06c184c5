// Package examples holds the tests of what users copy: every configuration
// under examples/, the README's snippet and the CI job example, each run with
// the provider installed by `make install` (.ci/install.sh) into a scratch
// home directory, so that `terraform init` finds it the way a user's does.
package examples
