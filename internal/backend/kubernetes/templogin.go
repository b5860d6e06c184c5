package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Temporary logins run as psql in the instance's pod (package selfhosted),
// only on an instance whose StatefulSet is proven.

// runningProven checks that the instance's StatefulSet is proven and its
// pod runs.
func (b *Backend) runningProven(ctx context.Context, inst backend.Instance) error {
	sts, ok, ours, err := b.find(ctx, inst)
	switch {
	case err != nil:
		return err
	case !ok:
		return fmt.Errorf("StatefulSet does not exist: %w", backend.ErrNotOurs)
	case !ours:
		return fmt.Errorf("%w: %w", notOurs(inst), backend.ErrNotOurs)
	}
	if st := b.podState(ctx, sts); st != "running" {
		return fmt.Errorf("pod %q is %s: %w", podName(inst.Name), st, backend.ErrNotRunning)
	}
	return nil
}

// OpenTempLogin implements backend.Backend.
func (b *Backend) OpenTempLogin(ctx context.Context, inst backend.Instance, ttl time.Duration) (backend.TempLogin, error) {
	if inst.Proof.Legacy() {
		return backend.TempLogin{}, fmt.Errorf("opening a temporary login on instance %q: %w", inst.Name, backend.ErrLegacy)
	}
	if err := b.runningProven(ctx, inst); err != nil {
		return backend.TempLogin{}, fmt.Errorf("opening a temporary login on instance %q: %w", inst.Name, err)
	}
	svc, err := b.cs.CoreV1().Services(b.namespace).Get(ctx, inst.Name, metav1.GetOptions{})
	if err != nil {
		return backend.TempLogin{}, b.apiError(fmt.Sprintf("reading Service %q", inst.Name), err)
	}
	host, port, err := b.address(ctx, svc)
	if err != nil {
		return backend.TempLogin{}, err
	}
	l, err := selfhosted.OpenTempLogin(ctx, b.psqlIn(inst), inst, ttl)
	if err != nil {
		return backend.TempLogin{}, fmt.Errorf("%w on instance %q", err, inst.Name)
	}
	if inst.Host != "" {
		host = inst.Host
	}
	l.Host, l.Port = host, port
	return l, nil
}

// RenewTempLogin implements backend.Backend.
func (b *Backend) RenewTempLogin(ctx context.Context, inst backend.Instance, role string, ttl time.Duration) (time.Time, error) {
	if inst.Proof.Legacy() || !pgsql.IsTempRoleOf(inst.Username, role) {
		return time.Time{}, &backend.TempLoginGoneError{Role: role}
	}
	if err := b.runningProven(ctx, inst); err != nil {
		return time.Time{}, fmt.Errorf("renewing temporary login %q on instance %q: %w", role, inst.Name, err)
	}
	until, err := selfhosted.RenewTempLogin(ctx, b.psqlIn(inst), inst, role, ttl)
	var gone *backend.TempLoginGoneError
	if err != nil && !errors.As(err, &gone) {
		return time.Time{}, fmt.Errorf("renewing temporary login %q on instance %q: %w", role, inst.Name, err)
	}
	return until, err
}

// CloseTempLogin implements backend.Backend. An instance that is gone, or
// someone else's now, took the login along.
func (b *Backend) CloseTempLogin(ctx context.Context, inst backend.Instance, role string) error {
	if inst.Proof.Legacy() || !pgsql.IsTempRoleOf(inst.Username, role) {
		return nil
	}
	err := b.runningProven(ctx, inst)
	if errors.Is(err, backend.ErrNotOurs) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("closing temporary login %q on instance %q: %w", role, inst.Name, err)
	}
	if err := selfhosted.CloseTempLogin(ctx, b.psqlIn(inst), inst, role); err != nil {
		return fmt.Errorf("closing temporary login %q on instance %q: %w", role, inst.Name, err)
	}
	return nil
}
