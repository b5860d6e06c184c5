package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// existingReadyTimeout bounds the wait for an existing instance's server
// to take a login (a pod being rescheduled).
const existingReadyTimeout = 2 * time.Minute

// goneTimeout bounds the wait for a deleted instance's objects to be gone,
// so that a create of the same name right after finds the name free.
const goneTimeout = 3 * time.Minute

func listOne(selector string) metav1.ListOptions {
	return metav1.ListOptions{LabelSelector: selector, Limit: 1}
}

// proven reports whether an object's metadata carries p.
func proven(m metav1.ObjectMeta, p backend.Proof) bool {
	return !p.Legacy() && m.Labels[LabelInstance] == "true" && m.Labels[LabelInstanceID] == idLabel(p.ID) &&
		m.Annotations[AnnotationProof] == p.Value
}

// find reads the instance's StatefulSet. ok is false when there is none;
// ours is false when the one found is not the instance's: without its
// proof, or (once the row records it) another object than the one the
// create made, whatever its annotations say.
func (b *Backend) find(ctx context.Context, inst backend.Instance) (sts *appsv1.StatefulSet, ok, ours bool, err error) {
	sts, err = b.cs.AppsV1().StatefulSets(b.namespace).Get(ctx, inst.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false, false, nil
	}
	if err != nil {
		return nil, false, false, b.apiError(fmt.Sprintf("reading StatefulSet %q", inst.Name), err)
	}
	if inst.ContainerID != "" && string(sts.UID) != inst.ContainerID {
		return sts, true, false, nil
	}
	return sts, true, proven(sts.ObjectMeta, inst.Proof) && sts.DeletionTimestamp == nil, nil
}

func notOurs(inst backend.Instance) error {
	return fmt.Errorf("StatefulSet %q does not carry this instance's ownership proof; it was left alone", inst.Name)
}

// Inspect implements backend.Backend. The instance exists when its
// StatefulSet and Service are there and proven.
func (b *Backend) Inspect(ctx context.Context, inst backend.Instance) (backend.Status, error) {
	sts, ok, ours, err := b.find(ctx, inst)
	if err != nil || !ok {
		return backend.Status{}, err
	}
	if !ours {
		return backend.Status{Foreign: []string{fmt.Sprintf("StatefulSet %q", inst.Name)}}, nil
	}
	svc, err := b.cs.CoreV1().Services(b.namespace).Get(ctx, inst.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return backend.Status{}, nil // partly gone: recreated
	case err != nil:
		return backend.Status{}, b.apiError(fmt.Sprintf("reading Service %q", inst.Name), err)
	case !proven(svc.ObjectMeta, inst.Proof):
		return backend.Status{Foreign: []string{fmt.Sprintf("Service %q", inst.Name)}}, nil
	}
	st := backend.Status{Exists: true, State: b.podState(ctx, sts)}
	if svc.Spec.Type == corev1.ServiceTypeNodePort && len(svc.Spec.Ports) == 1 && b.cfg.AdvertisedHost == "" {
		st.Port = int(svc.Spec.Ports[0].NodePort)
	}
	return st, nil
}

// podState is "running" when the instance's pod runs and is ready, else
// what keeps it from that.
func (b *Backend) podState(ctx context.Context, sts *appsv1.StatefulSet) string {
	if sts.Spec.Replicas != nil && *sts.Spec.Replicas == 0 {
		return "stopped"
	}
	pod, err := b.cs.CoreV1().Pods(b.namespace).Get(ctx, podName(sts.Name), metav1.GetOptions{})
	if err != nil {
		return "no pod"
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name != containerName {
			continue
		}
		switch {
		case cs.State.Waiting != nil:
			return strings.ToLower(cs.State.Waiting.Reason)
		case cs.State.Running != nil && cs.Ready:
			return "running"
		case cs.State.Running != nil:
			return "starting"
		case cs.State.Terminated != nil:
			return "exited"
		}
	}
	return strings.ToLower(string(pod.Status.Phase))
}

// session is a tenant login into an instance's server, or, for a
// write-only password, only the proof that the stored verifier matches
// (conn nil: the work is done through psql in the pod).
type session struct {
	conn *pgx.Conn
	sts  *appsv1.StatefulSet
}

func (s *session) close(ctx context.Context) {
	if s.conn != nil {
		_ = s.conn.Close(context.WithoutCancel(ctx))
	}
}

// errGone: the instance's StatefulSet does not exist.
var errGone = errors.New("the instance's StatefulSet does not exist")

// login authenticates auth as the instance user's on a StatefulSet proven
// to be the instance's: a login with the password, or, for a write-only
// one, the stored verifier compared from inside the pod.
func (b *Backend) login(ctx context.Context, inst backend.Instance, auth backend.Auth) (*session, error) {
	sts, ok, ours, err := b.find(ctx, inst)
	switch {
	case err != nil:
		return nil, err
	case !ok:
		return nil, errGone
	case !ours:
		return nil, fmt.Errorf("%w: %w", notOurs(inst), backend.ErrNotOurs)
	}
	svc, err := b.cs.CoreV1().Services(b.namespace).Get(ctx, inst.Name, metav1.GetOptions{})
	if err != nil {
		return nil, b.apiError(fmt.Sprintf("reading Service %q", inst.Name), err)
	}
	if !proven(svc.ObjectMeta, inst.Proof) {
		return nil, fmt.Errorf("the Service %q does not carry this instance's ownership proof: %w", inst.Name, backend.ErrNotOurs)
	}
	s := &session{sts: sts}
	wctx, cancel := context.WithTimeout(ctx, existingReadyTimeout)
	defer cancel()
	// A write-only password is checked by comparing verifiers through
	// pods/exec.
	per := attemptTimeout
	if auth.Password == "" {
		per = selfhosted.CheckAttemptTimeout
	}
	_, _, err = b.untilLogin(wctx, inst.Name, svc, per, func(ctx context.Context, host string, port int) error {
		if auth.Password == "" {
			return selfhosted.CheckVerifier(ctx, b.psqlIn(inst), inst.Username, auth.Verifier)
		}
		conn, err := target(host, port, inst.Username, auth.Password, inst.DBName).ConnectOnce(ctx)
		if err == nil {
			s.conn = conn
		}
		return err
	})
	if err == nil {
		return s, nil
	}
	if lerr := selfhosted.LoginError(inst.Username, err); lerr != nil {
		return nil, lerr
	}
	return nil, fmt.Errorf("logging in as %q: %w", inst.Username, err)
}

// provenSession is login for acts that need the instance to exist.
func (b *Backend) provenSession(ctx context.Context, inst backend.Instance, auth backend.Auth, doing string) (*session, error) {
	s, err := b.login(ctx, inst, auth)
	if errors.Is(err, errGone) {
		return nil, fmt.Errorf("%s on instance %q: %w", doing, inst.Name, backend.ErrNotOurs)
	}
	if err != nil {
		return nil, fmt.Errorf("%s on instance %q: %w", doing, inst.Name, err)
	}
	return s, nil
}

// Authenticate implements backend.Backend.
func (b *Backend) Authenticate(ctx context.Context, inst backend.Instance, auth backend.Auth) error {
	s, err := b.provenSession(ctx, inst, auth, "authenticating")
	if err != nil {
		return err
	}
	s.close(ctx)
	return nil
}

// SetPassword implements backend.Backend: as the tenant when the password
// is at hand, else from inside the pod.
func (b *Backend) SetPassword(ctx context.Context, inst backend.Instance, auth backend.Auth, verifier string) error {
	s, err := b.provenSession(ctx, inst, auth, "changing password")
	if err != nil {
		return err
	}
	defer s.close(ctx)
	if s.conn != nil {
		_, err = s.conn.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD "+pgsql.QuoteLiteral(verifier))
	} else {
		err = selfhosted.SetVerifier(ctx, b.psqlIn(inst), verifier)
	}
	if err != nil {
		return fmt.Errorf("changing password on instance %q: %w", inst.Name, err)
	}
	return nil
}

// Delete implements backend.Backend.
func (b *Backend) Delete(ctx context.Context, inst backend.Instance, auth backend.Auth, force bool) error {
	s, err := b.login(ctx, inst, auth)
	switch {
	case errors.Is(err, errGone), errors.Is(err, backend.ErrNotOurs):
		// Gone, or the name is someone else's now: still remove what
		// carries the proof (a claim or Service left by a delete that was
		// cut off), never anything else.
		if perr := b.removeProven(ctx, inst); perr != nil {
			return fmt.Errorf("deleting instance %q: %w", inst.Name, perr)
		}
		return nil
	case err != nil:
		return fmt.Errorf("deleting instance %q: %w", inst.Name, err)
	}
	var n int
	if s.conn != nil {
		err = s.conn.QueryRow(ctx, selfhosted.SessionsQuery).Scan(&n)
	} else {
		n, err = selfhosted.CountSessions(ctx, b.psqlIn(inst))
	}
	switch {
	case err != nil:
		err = fmt.Errorf("counting sessions on instance %q: %w", inst.Name, err)
	case n > 0 && !force:
		err = &backend.SessionsError{DBName: inst.DBName, Count: n}
	case n > 0:
		// PostgreSQL shuts down on SIGTERM only when its clients have
		// gone: end them, so the pod stops at once.
		err = b.terminateSessions(ctx, s, inst)
	}
	s.close(ctx)
	if err != nil {
		return err
	}
	inst.ContainerID = string(s.sts.UID)
	if err := b.removeProven(ctx, inst); err != nil {
		return fmt.Errorf("deleting instance %q: %w", inst.Name, err)
	}
	return nil
}

func (b *Backend) terminateSessions(ctx context.Context, s *session, inst backend.Instance) error {
	const q = `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`
	var err error
	if s.conn != nil {
		_, err = s.conn.Exec(ctx, q)
	} else {
		_, err = b.psqlIn(inst)(ctx, q+";\n\\q\n")
	}
	if err != nil {
		return fmt.Errorf("ending the other sessions on instance %q: %w", inst.Name, err)
	}
	return nil
}

// Purge implements backend.Backend: it authenticates nothing, so it only
// removes objects that carry the instance's proof.
func (b *Backend) Purge(ctx context.Context, inst backend.Instance) error {
	if inst.Proof.Legacy() {
		return fmt.Errorf("purging instance %q: %w", inst.Name, backend.ErrLegacy)
	}
	if err := b.removeProven(ctx, inst); err != nil {
		return fmt.Errorf("purging instance %q: %w", inst.Name, err)
	}
	return nil
}

// removeProven deletes each object of the instance that carries its proof
// (the StatefulSet also only when it is the recorded one), each by the UID
// and resource version that were just proven, and waits until they are
// gone, so the name is free for the next create. Objects without the
// proof are left alone.
func (b *Backend) removeProven(ctx context.Context, inst backend.Instance) error {
	if inst.Proof.Legacy() {
		return backend.ErrLegacy
	}
	var gone []func(context.Context) (bool, error)
	for _, o := range b.objects(inst.Name) {
		for try := 1; ; try++ {
			m, err := o.get(ctx)
			if apierrors.IsNotFound(err) {
				break
			}
			if err != nil {
				return b.apiError(fmt.Sprintf("reading %s %q", o.kind, o.name), err)
			}
			if !proven(*m, inst.Proof) || o.kind == "StatefulSet" && inst.ContainerID != "" && string(m.UID) != inst.ContainerID {
				break
			}
			if m.DeletionTimestamp == nil {
				err := b.deleteUID(ctx, o.kind, o.name, m.UID, m.ResourceVersion)
				if errors.Is(err, errChanged) && try < 10 {
					continue // prove it again as it is now
				}
				if err != nil {
					return err
				}
			}
			uid, get := m.UID, o.get
			gone = append(gone, func(ctx context.Context) (bool, error) {
				m, err := get(ctx)
				if apierrors.IsNotFound(err) {
					return true, nil
				}
				return err == nil && m.UID != uid, err
			})
			break
		}
	}
	wctx, cancel := context.WithTimeout(ctx, goneTimeout)
	defer cancel()
	for _, g := range gone {
		for {
			done, err := g(wctx)
			if err != nil {
				return b.apiError(fmt.Sprintf("waiting for instance %q's objects to be deleted", inst.Name), err)
			}
			if done {
				break
			}
			select {
			case <-wctx.Done():
				return fmt.Errorf("instance %q's objects were deleted but are still there after %s (a finalizer, or a pod that "+
					"does not stop?): %w", inst.Name, goneTimeout, wctx.Err())
			case <-time.After(b.cfg.ReadyPollInterval):
			}
		}
	}
	return nil
}

// object is one kind of object an instance may have under its name.
type object struct {
	kind, name string
	get        func(context.Context) (*metav1.ObjectMeta, error)
}

// objects lists the instance's objects in the order they are removed: the
// StatefulSet first, then its pod (gone with it, or orphaned), which
// releases the claim.
func (b *Backend) objects(name string) []object {
	apps, core := b.cs.AppsV1(), b.cs.CoreV1()
	return []object{
		{"StatefulSet", name, func(ctx context.Context) (*metav1.ObjectMeta, error) {
			o, err := apps.StatefulSets(b.namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			return &o.ObjectMeta, nil
		}},
		{"Pod", podName(name), func(ctx context.Context) (*metav1.ObjectMeta, error) {
			o, err := core.Pods(b.namespace).Get(ctx, podName(name), metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			return &o.ObjectMeta, nil
		}},
		{"Service", name, func(ctx context.Context) (*metav1.ObjectMeta, error) {
			o, err := core.Services(b.namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			return &o.ObjectMeta, nil
		}},
		{"Secret", secretName(name), func(ctx context.Context) (*metav1.ObjectMeta, error) {
			o, err := core.Secrets(b.namespace).Get(ctx, secretName(name), metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			return &o.ObjectMeta, nil
		}},
		{"PersistentVolumeClaim", claimName(name), func(ctx context.Context) (*metav1.ObjectMeta, error) {
			o, err := core.PersistentVolumeClaims(b.namespace).Get(ctx, claimName(name), metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			return &o.ObjectMeta, nil
		}},
	}
}

// deleteUID deletes the object of kind and name only if it is still the
// one with uid (and, when rv is set, unchanged since it was proven): the
// API server checks the preconditions, so nothing in between can make it
// delete another object. Pods go in the background; gone already is fine.
func (b *Backend) deleteUID(ctx context.Context, kind, name string, uid types.UID, rv string) error {
	pre := &metav1.Preconditions{UID: &uid}
	if rv != "" {
		pre.ResourceVersion = &rv
	}
	opts := metav1.DeleteOptions{Preconditions: pre, PropagationPolicy: ptrTo(metav1.DeletePropagationBackground)}
	var err error
	switch kind {
	case "StatefulSet":
		err = b.cs.AppsV1().StatefulSets(b.namespace).Delete(ctx, name, opts)
	case "Pod":
		err = b.cs.CoreV1().Pods(b.namespace).Delete(ctx, name, opts)
	case "Service":
		err = b.cs.CoreV1().Services(b.namespace).Delete(ctx, name, opts)
	case "Secret":
		err = b.cs.CoreV1().Secrets(b.namespace).Delete(ctx, name, opts)
	case "PersistentVolumeClaim":
		err = b.cs.CoreV1().PersistentVolumeClaims(b.namespace).Delete(ctx, name, opts)
	default:
		return fmt.Errorf("deleting %s %q: unknown kind", kind, name)
	}
	switch {
	case err == nil, apierrors.IsNotFound(err):
		return nil
	case apierrors.IsConflict(err):
		// Changed since it was proven (the StatefulSet controller writes
		// its status): the caller proves it again.
		return fmt.Errorf("%s %q changed since it was proven: %w", kind, name, errChanged)
	}
	return b.apiError(fmt.Sprintf("deleting %s %q", kind, name), err)
}

// errChanged: a delete's preconditions failed.
var errChanged = errors.New("deletion refused by its preconditions")

func ptrTo[T any](v T) *T { return &v }
