//go:build !faultinject

package faultinject

import "context"

// Enabled reports whether the hooks are compiled in.
const Enabled = false

// Pause does nothing without the faultinject build tag.
func Pause(context.Context, string) {}
