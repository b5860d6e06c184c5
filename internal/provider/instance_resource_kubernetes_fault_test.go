//go:build unix

package provider

import (
	"context"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pause points of a kubernetes create (internal/backend/kubernetes).
const (
	pointKubeStatefulSetCreated = "kubernetes.statefulset_created"
	pointKubeObjectsCreated     = "kubernetes.objects_created"
)

// TestAccFault_kubernetesKill: the provider killed (SIGKILL) or stopped
// (SIGTERM) after the StatefulSet exists, after all objects exist (server
// starting), and after the backend finished but before the row was
// completed: the lease works here too.
func TestAccFault_kubernetesKill(t *testing.T) {
	faultAccPreCheck(t, kubeEnv...)
	runFaultCases(t, faultCases("kubernetes", pointKubeStatefulSetCreated, pointKubeObjectsCreated, pointBackendDone))
}

func (i *faultInstance) kubeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Minute)
}

// kubeRecordPaused notes the StatefulSet the paused run made.
func (i *faultInstance) kubeRecordPaused(t *testing.T) {
	ctx, cancel := i.kubeCtx()
	defer cancel()
	sts, err := i.kube.AppsV1().StatefulSets(kubeNamespace).Get(ctx, i.name, metav1.GetOptions{})
	if err == nil {
		i.paused[string(sts.UID)] = true
		t.Logf("paused: StatefulSet %s", sts.UID)
	} else if !apierrors.IsNotFound(err) {
		t.Errorf("%v", err)
	}
}

func (i *faultInstance) kubeLeftovers(t *testing.T) []string {
	ctx, cancel := i.kubeCtx()
	defer cancel()
	left, err := kubeObjects(ctx, i.kube, i.name)
	if err != nil {
		t.Errorf("listing the instance's objects: %v", err)
	}
	sort.Strings(left)
	return left
}

// kubeSweep deletes whatever has the instance's names.
func (i *faultInstance) kubeSweep(t *testing.T) []string {
	ctx, cancel := i.kubeCtx()
	defer cancel()
	left := i.kubeLeftovers(t)
	bg := metav1.DeletePropagationBackground
	opts := metav1.DeleteOptions{PropagationPolicy: &bg}
	_ = i.kube.AppsV1().StatefulSets(kubeNamespace).Delete(ctx, i.name, opts)
	_ = i.kube.CoreV1().Services(kubeNamespace).Delete(ctx, i.name, opts)
	_ = i.kube.CoreV1().Secrets(kubeNamespace).Delete(ctx, i.name+"-bootstrap", opts)
	_ = i.kube.CoreV1().PersistentVolumeClaims(kubeNamespace).Delete(ctx, "data-"+i.name+"-0", opts)
	return left
}

// kubeCheckConverged: a login where the state says, the recorded
// StatefulSet is the one there and not the killed run's, and nothing but
// its StatefulSet, Service and claim has its names.
func (i *faultInstance) kubeCheckConverged(t *testing.T, attrs map[string]string) {
	port, err := strconv.Atoi(attrs["port"])
	if err != nil {
		t.Errorf("port in state %q: %v", attrs["port"], err)
	} else if err := writeAndRead(tenant(attrs["host"], port, i.db, i.user, i.password)); err != nil {
		t.Errorf("instance login via %s:%d from state after recovery: %v", attrs["host"], port, err)
	}
	ctx, cancel := i.kubeCtx()
	defer cancel()
	sts, err := i.kube.AppsV1().StatefulSets(kubeNamespace).Get(ctx, i.name, metav1.GetOptions{})
	switch {
	case err != nil:
		t.Errorf("StatefulSet after recovery: %v", err)
	case string(sts.UID) != attrs["container_id"]:
		t.Errorf("StatefulSet %s, state records %s", sts.UID, attrs["container_id"])
	case i.paused[string(sts.UID)]:
		t.Errorf("StatefulSet %s is the one the killed run made: the recovering run must remove it and create anew", sts.UID)
	}
	want := []string{"PersistentVolumeClaim data-" + i.name + "-0", "Service " + i.name, "StatefulSet " + i.name}
	if left := i.kubeLeftovers(t); !slices.Equal(left, want) {
		t.Errorf("objects of %s after recovery: %v, want %v", i.name, left, want)
	}
}
