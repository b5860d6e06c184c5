package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/faultinject"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

// Create implements backend.Backend. The bootstrap Secret is made first
// (the pod reads it when it starts), then the StatefulSet, then the
// Service; the Secret and Service are then owned by the StatefulSet, so
// that deleting it (by hand too) removes them. A create killed anywhere
// leaves only objects that carry the attempt's proof, which Purge removes.
func (b *Backend) Create(ctx context.Context, spec backend.Spec) (backend.Created, error) {
	if spec.Proof.Legacy() {
		return backend.Created{}, errors.New("a create needs an ownership proof")
	}
	if err := b.CheckSpec(spec); err != nil {
		return backend.Created{}, err
	}
	img := spec.Image
	if img == "" {
		img = b.cfg.Image
	}
	// Checked before anything is made, so a conflict leaves no trace; the
	// AlreadyExists of each create below covers the race. A claim of the
	// name would hand its data (and its roles) to the new pod.
	if err := b.checkFree(ctx, spec.Name); err != nil {
		return backend.Created{}, err
	}
	created, err := b.create(ctx, spec, img, selfhosted.RandomSecret())
	if err != nil {
		return backend.Created{}, b.failedCreate(ctx, spec, err)
	}
	return created, nil
}

func (b *Backend) create(ctx context.Context, spec backend.Spec, img, bootstrap string) (backend.Created, error) {
	api := b.cs.CoreV1()
	sec, err := api.Secrets(b.namespace).Create(ctx, b.secret(spec, bootstrap), metav1.CreateOptions{})
	if err != nil {
		return backend.Created{}, b.createError("Secret", secretName(spec.Name), err)
	}
	faultinject.Pause(ctx, "kubernetes.secret_created")
	sts, err := b.cs.AppsV1().StatefulSets(b.namespace).Create(ctx, b.statefulSet(spec, img), metav1.CreateOptions{})
	if err != nil {
		return backend.Created{}, b.createError("StatefulSet", spec.Name, err)
	}
	faultinject.Pause(ctx, "kubernetes.statefulset_created")
	svc, err := api.Services(b.namespace).Create(ctx, b.service(spec, sts), metav1.CreateOptions{})
	if err != nil {
		return backend.Created{}, b.createError("Service", spec.Name, err)
	}
	// The Secret was made before its owner existed.
	if err := b.own(ctx, "secrets", secretName(spec.Name), sec.UID, sts); err != nil {
		return backend.Created{}, err
	}
	faultinject.Pause(ctx, "kubernetes.objects_created")

	verifier := spec.Verifier
	if verifier == "" {
		if verifier, err = pgsql.ScramVerifier(spec.Password); err != nil {
			return backend.Created{}, err
		}
	}
	var p selfhosted.Personalisation
	host, port, err := b.untilLogin(ctx, spec.Name, svc, attemptTimeout, b.personaliseAttempt(ctx, spec, bootstrap, verifier, &p))
	if err != nil {
		return backend.Created{}, b.startError(ctx, spec, err)
	}
	// The bootstrap secret is no login any more; the Secret goes too (the
	// pod's reference is optional, so a restart does not miss it). The
	// claim is owned by the StatefulSet from now on, so that deleting it by
	// hand does not leave the data behind; it was proven to be this
	// create's by its annotation (a claim template's annotations are
	// copied to the claims made from it).
	if err := b.deleteUID(ctx, "Secret", secretName(spec.Name), sec.UID, ""); err != nil {
		return backend.Created{}, err
	}
	if pvc, err := api.PersistentVolumeClaims(b.namespace).Get(ctx, claimName(spec.Name), metav1.GetOptions{}); err == nil &&
		proven(pvc.ObjectMeta, spec.Proof) {
		if err := b.own(ctx, "persistentvolumeclaims", pvc.Name, pvc.UID, sts); err != nil {
			return backend.Created{}, err
		}
	}
	if b.cfg.AdvertisedHost != "" {
		host = b.cfg.AdvertisedHost
	}
	return backend.Created{
		Host:        host,
		Port:        port,
		Username:    spec.Username,
		ContainerID: string(sts.UID),
		Image:       img,
		SSLMode:     backend.SSLModeFor(p.SSL),
	}, nil
}

// personaliseAttempt is one readiness attempt of a new instance: log in with
// the bootstrap secret and set the instance's verifier.
func (b *Backend) personaliseAttempt(ctx context.Context, spec backend.Spec, bootstrap, verifier string,
	p *selfhosted.Personalisation) func(actx context.Context, host string, port int) error {
	return func(actx context.Context, host string, port int) error {
		err := selfhosted.Personalise(actx, target(host, port, spec.Username, bootstrap, spec.DBName), verifier, attemptTimeout, p)
		if err != nil && p.Sent && pgsql.IsAuthFailure(err) {
			// An earlier attempt's ALTER ROLE may have committed after
			// it stopped waiting for the answer (seen on a loaded
			// machine): ask the server, from inside, on the create's
			// own time (an exec under load takes longer than an
			// attempt may).
			inst := backend.Instance{Name: spec.Name, DBName: spec.DBName, Username: spec.Username}
			if secret, _, verr := selfhosted.StoredVerifier(ctx, b.psqlIn(inst)); verr == nil && secret == verifier {
				p.SSL, err = selfhosted.SSLSetting(ctx, target(host, port, spec.Username, spec.Password, spec.DBName), attemptTimeout)
			}
		}
		return err
	}
}

// checkFree reports a conflict when any object the create would make, or
// the claim its pod would mount, already exists.
func (b *Backend) checkFree(ctx context.Context, name string) error {
	for _, o := range []struct {
		kind, name string
		get        func(context.Context, string, metav1.GetOptions) error
	}{
		{"StatefulSet", name, func(ctx context.Context, n string, o metav1.GetOptions) error {
			_, err := b.cs.AppsV1().StatefulSets(b.namespace).Get(ctx, n, o)
			return err
		}},
		{"Service", name, func(ctx context.Context, n string, o metav1.GetOptions) error {
			_, err := b.cs.CoreV1().Services(b.namespace).Get(ctx, n, o)
			return err
		}},
		{"Secret", secretName(name), func(ctx context.Context, n string, o metav1.GetOptions) error {
			_, err := b.cs.CoreV1().Secrets(b.namespace).Get(ctx, n, o)
			return err
		}},
		{"PersistentVolumeClaim", claimName(name), func(ctx context.Context, n string, o metav1.GetOptions) error {
			_, err := b.cs.CoreV1().PersistentVolumeClaims(b.namespace).Get(ctx, n, o)
			return err
		}},
	} {
		err := o.get(ctx, o.name, metav1.GetOptions{})
		switch {
		case err == nil:
			return conflict(o.kind, o.name)
		case !apierrors.IsNotFound(err):
			return b.apiError(fmt.Sprintf("looking for %s %q", o.kind, o.name), err)
		}
	}
	return nil
}

func conflict(kind, name string) error {
	return &backend.ConflictError{Kind: kind, Name: name, Attribute: "name"}
}

func (b *Backend) createError(kind, name string, err error) error {
	if apierrors.IsAlreadyExists(err) {
		return conflict(kind, name)
	}
	return b.apiError(fmt.Sprintf("creating %s %q", kind, name), err)
}

// meta is the metadata every object of the instance carries.
func (b *Backend) meta(name string, spec backend.Spec) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      name,
		Namespace: b.namespace,
		Labels: map[string]string{
			LabelManagedBy:  managedBy,
			LabelInstance:   "true",
			LabelInstanceID: idLabel(spec.InstanceID),
			LabelName:       spec.Name,
		},
		Annotations: map[string]string{AnnotationProof: spec.Proof.Value},
	}
}

// secret holds the one-time bootstrap password the image's entrypoint
// gives the superuser; it is replaced by the instance's verifier as soon
// as the server takes a login, and the Secret deleted.
func (b *Backend) secret(spec backend.Spec, bootstrap string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: b.meta(secretName(spec.Name), spec),
		Type:       corev1.SecretTypeOpaque,
		StringData: map[string]string{"password": bootstrap},
		Immutable:  ptr.To(true),
	}
}

func (b *Backend) statefulSet(spec backend.Spec, img string) *appsv1.StatefulSet {
	m := b.meta(spec.Name, spec)
	m.Annotations[AnnotationImage] = img
	// The pod carries the proof too: a StatefulSet deleted with
	// propagation "orphan" leaves it running, holding the claim.
	pod := b.meta("", spec)
	pod.Namespace = ""
	claim := b.meta(volumeName, spec)
	claim.Namespace = ""
	var class *string
	if b.cfg.StorageClass != "" {
		class = ptr.To(b.cfg.StorageClass)
	}
	return &appsv1.StatefulSet{
		ObjectMeta: m,
		Spec: appsv1.StatefulSetSpec{
			Replicas:    ptr.To[int32](1),
			ServiceName: spec.Name,
			Selector:    &metav1.LabelSelector{MatchLabels: map[string]string{LabelName: spec.Name}},
			// Retain: claims are removed by the provider, only when they
			// carry the proof (the controller would also take over a
			// claim someone else made under the same name).
			PersistentVolumeClaimRetentionPolicy: &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{
				WhenDeleted: appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
				WhenScaled:  appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: pod,
				Spec: corev1.PodSpec{
					// PostgreSQL shuts down cleanly well within this once
					// the sessions are gone (a destroy ends them first).
					TerminationGracePeriodSeconds: ptr.To[int64](10),
					EnableServiceLinks:            ptr.To(false),
					AutomountServiceAccountToken:  ptr.To(false),
					Containers: []corev1.Container{{
						Name:            containerName,
						Image:           img,
						ImagePullPolicy: corev1.PullIfNotPresent,
						// The pod spec names the Secret, never holds the
						// password; the reference is optional because the
						// Secret is deleted once the instance is ready.
						Env: []corev1.EnvVar{
							{Name: "POSTGRES_USER", Value: spec.Username},
							{Name: "POSTGRES_DB", Value: spec.DBName},
							{Name: "POSTGRES_PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
								LocalObjectReference: corev1.LocalObjectReference{Name: secretName(spec.Name)},
								Key:                  "password",
								Optional:             ptr.To(true),
							}}},
						},
						Ports:        []corev1.ContainerPort{{Name: "postgres", ContainerPort: pgPort}},
						Resources:    b.resources,
						VolumeMounts: []corev1.VolumeMount{{Name: volumeName, MountPath: pgdataMount}},
					}},
				},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: claim,
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					StorageClassName: class,
					Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: b.storage}},
				},
			}},
		},
	}
}

func (b *Backend) service(spec backend.Spec, sts *appsv1.StatefulSet) *corev1.Service {
	m := b.meta(spec.Name, spec)
	m.OwnerReferences = []metav1.OwnerReference{ownerRef(sts)}
	return &corev1.Service{
		ObjectMeta: m,
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceType(b.cfg.ServiceType),
			Selector: map[string]string{LabelName: spec.Name},
			Ports:    []corev1.ServicePort{{Name: "postgres", Port: pgPort, TargetPort: intstr.FromInt32(pgPort)}},
		},
	}
}

func ownerRef(sts *appsv1.StatefulSet) metav1.OwnerReference {
	return metav1.OwnerReference{
		APIVersion: "apps/v1",
		Kind:       "StatefulSet",
		Name:       sts.Name,
		UID:        sts.UID,
	}
}

// own makes sts the owner of the object of resource name, which must still
// be the one with uid (a JSON patch tests it first).
func (b *Backend) own(ctx context.Context, resource, name string, uid types.UID, sts *appsv1.StatefulSet) error {
	ref := ownerRef(sts)
	patch := fmt.Sprintf(`[{"op":"test","path":"/metadata/uid","value":%q},{"op":"add","path":"/metadata/ownerReferences","value":[`+
		`{"apiVersion":%q,"kind":%q,"name":%q,"uid":%q}]}]`, uid, ref.APIVersion, ref.Kind, ref.Name, ref.UID)
	err := b.cs.CoreV1().RESTClient().Patch(types.JSONPatchType).Namespace(b.namespace).Resource(resource).Name(name).
		Body([]byte(patch)).Do(ctx).Error()
	if err != nil {
		return b.apiError(fmt.Sprintf("making StatefulSet %q the owner of %s %q", sts.Name, resource, name), err)
	}
	return nil
}

// untilLogin waits for the instance's service address and then calls
// attempt with it, each call bounded by per, until one succeeds, fails in a
// way waiting cannot mend, or ctx ends. The pod is looked at every podCheckInterval: a container
// that cannot start (no image, a crash loop) fails the create at once,
// with its last log lines.
func (b *Backend) untilLogin(ctx context.Context, name string, svc *corev1.Service, per time.Duration,
	attempt func(ctx context.Context, host string, port int) error) (string, int, error) {
	var host string
	var port, attempts int
	var lastErr error
	var checked time.Time
	start := time.Now()
	for {
		if time.Since(checked) >= podCheckInterval {
			if err := b.podFailed(ctx, name); err != nil {
				return "", 0, err
			}
			if host == "" {
				var err error
				if host, port, err = b.address(ctx, svc); err != nil {
					return "", 0, err
				}
			}
			checked = time.Now()
		}
		if host != "" {
			attempts++
			actx, cancel := context.WithTimeout(ctx, per)
			lastErr = attempt(actx, host, port)
			cancel()
			if lastErr == nil {
				return host, port, nil
			}
			var stop *selfhosted.StopWaiting
			if errors.As(lastErr, &stop) {
				return "", 0, stop.Err
			}
			if pgsql.IsAuthFailure(lastErr) {
				return "", 0, fmt.Errorf("login refused: %w", lastErr)
			}
		}
		select {
		case <-ctx.Done():
			where := "its service address"
			if host != "" {
				where = fmt.Sprintf("%s:%d", host, port)
			}
			return "", 0, fmt.Errorf("gave up waiting for a login on %s after %d attempts over %s (%w); last attempt: %v",
				where, attempts, time.Since(start).Round(time.Millisecond), context.Cause(ctx), lastErr)
		case <-time.After(b.cfg.ReadyPollInterval):
		}
	}
}

// address is where the service of an instance is reached: the advertised
// host when configured, else its cluster IP, the node's IP and node port,
// or the load balancer's address. "" while it is not known yet (a pod not
// scheduled, a load balancer not provisioned).
func (b *Backend) address(ctx context.Context, svc *corev1.Service) (string, int, error) {
	port := pgPort
	if svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer && b.cfg.AdvertisedHost != "" {
		port = int(svc.Spec.Ports[0].NodePort)
	}
	if b.cfg.AdvertisedHost != "" {
		return b.cfg.AdvertisedHost, port, nil
	}
	switch svc.Spec.Type {
	case corev1.ServiceTypeNodePort:
		pod, err := b.cs.CoreV1().Pods(b.namespace).Get(ctx, podName(svc.Name), metav1.GetOptions{})
		if apierrors.IsNotFound(err) || err == nil && pod.Status.HostIP == "" {
			return "", 0, nil
		}
		if err != nil {
			return "", 0, b.apiError(fmt.Sprintf("reading pod %q", podName(svc.Name)), err)
		}
		return pod.Status.HostIP, port, nil
	case corev1.ServiceTypeLoadBalancer:
		cur, err := b.cs.CoreV1().Services(b.namespace).Get(ctx, svc.Name, metav1.GetOptions{})
		if err != nil {
			return "", 0, b.apiError(fmt.Sprintf("reading Service %q", svc.Name), err)
		}
		for _, in := range cur.Status.LoadBalancer.Ingress {
			if in.IP != "" {
				return in.IP, port, nil
			}
			if in.Hostname != "" {
				return in.Hostname, port, nil
			}
		}
		return "", 0, nil
	default:
		return svc.Spec.ClusterIP, port, nil
	}
}

// podFailed reports a pod whose container cannot start or has exited as
// a *backend.StartError with its last log lines: waiting will not mend it.
func (b *Backend) podFailed(ctx context.Context, name string) error {
	pod, err := b.cs.CoreV1().Pods(b.namespace).Get(ctx, podName(name), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil // not made yet
	}
	if err != nil {
		return b.apiError(fmt.Sprintf("reading pod %q", podName(name)), err)
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable &&
			strings.Contains(c.Message, "persistentvolumeclaim") && strings.Contains(c.Message, "not found") {
			// The StatefulSet controller makes the claim before the pod, but
			// the scheduler can meet the pod before its cache has the claim
			// (seen on a loaded cluster) and tries again later. Only a claim
			// the API does not have either will never come.
			_, err := b.cs.CoreV1().PersistentVolumeClaims(b.namespace).Get(ctx, claimName(name), metav1.GetOptions{})
			switch {
			case err == nil:
				continue
			case !apierrors.IsNotFound(err):
				return b.apiError(fmt.Sprintf("reading PersistentVolumeClaim %q", claimName(name)), err)
			}
			return &backend.StartError{Reason: "pod " + pod.Name + " cannot be scheduled: " + c.Message}
		}
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name != containerName {
			continue
		}
		if w := cs.State.Waiting; w != nil {
			if w.Reason == "CreateContainerConfigError" {
				lag, err := b.secretCacheLag(ctx, pod, name, w.Message)
				if err != nil {
					return err
				}
				if lag {
					continue
				}
			}
			switch w.Reason {
			case "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
				"CreateContainerError", "CrashLoopBackOff":
				err := &backend.StartError{Reason: fmt.Sprintf("container %s of pod %s: %s: %s", containerName, pod.Name, w.Reason, w.Message)}
				if cs.RestartCount > 0 { // else it never ran: no logs
					err.Logs = b.tailLogs(ctx, pod.Name, true)
				}
				return err
			}
		}
		if t := cs.State.Terminated; t != nil || cs.RestartCount > 0 {
			reason := fmt.Sprintf("container %s of pod %s exited", containerName, pod.Name)
			if t != nil {
				reason += fmt.Sprintf(" with code %d (%s)", t.ExitCode, t.Reason)
			}
			return &backend.StartError{Reason: reason, Logs: b.tailLogs(ctx, pod.Name, t == nil)}
		}
	}
	return nil
}

// secretSyncGrace is how long after a pod's creation a kubelet's lagging
// secret cache is waited for. The kubelet tries again within seconds; one
// that still cannot after this has another problem (its permissions, say),
// which the create reports instead of waiting out its whole timeout.
const secretSyncGrace = 2 * time.Minute

// secretCacheLag reports a CreateContainerConfigError that the kubelet
// mends by itself: its secret cache did not sync in time ("failed to sync
// secret cache: timed out waiting for the condition", seen for a bootstrap
// Secret made right after one of the same name was deleted), or it does
// not have the bootstrap Secret yet while the API does. The kubelet tries
// again; a Secret the API does not have either will never come.
func (b *Backend) secretCacheLag(ctx context.Context, pod *corev1.Pod, name, message string) (bool, error) {
	if time.Since(pod.CreationTimestamp.Time) > secretSyncGrace {
		return false, nil
	}
	if strings.Contains(message, "failed to sync secret cache") {
		return true, nil
	}
	if !strings.Contains(message, secretName(name)) || !strings.Contains(message, "not found") {
		return false, nil
	}
	_, err := b.cs.CoreV1().Secrets(b.namespace).Get(ctx, secretName(name), metav1.GetOptions{})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, b.apiError(fmt.Sprintf("reading Secret %q", secretName(name)), err)
}

// tailLogs is the postgres container's last log lines ("" when none);
// previous reads those of the run before the current one.
func (b *Backend) tailLogs(ctx context.Context, pod string, previous bool) string {
	raw, err := b.cs.CoreV1().Pods(b.namespace).GetLogs(pod, &corev1.PodLogOptions{
		Container: containerName, TailLines: ptr.To[int64](logTail), Previous: previous,
	}).DoRaw(ctx)
	if err != nil {
		return fmt.Sprintf("(could not read logs: %v)", err)
	}
	return strings.TrimRight(string(raw), "\n")
}

// startError classifies a failed readiness wait as docker does: what
// cannot clear by waiting is a *backend.StartError.
func (b *Backend) startError(ctx context.Context, spec backend.Spec, err error) error {
	var start *backend.StartError
	switch {
	case errors.As(err, &start):
		return err
	case pgsql.Code(err) == pgsql.CodeInvalidCatalogName:
		return &backend.StartError{Reason: fmt.Sprintf("database %q does not exist in the new server (the image did not create "+
			"POSTGRES_DB)", spec.DBName), Logs: b.tailLogs(ctx, podName(spec.Name), false)}
	case pgsql.IsAuthFailure(err):
		return &backend.StartError{Reason: fmt.Sprintf("the new server refused the login of %q with the bootstrap password "+
			"it was started with (%s; the image did not honour POSTGRES_USER and POSTGRES_PASSWORD, or the volume held "+
			"another server's data)", spec.Username, selfhosted.ServerSaid(err)), Logs: b.tailLogs(ctx, podName(spec.Name), false)}
	}
	return err
}

// failedCreate removes what this create made (what carries its proof,
// which no other create's objects can) and says why it failed.
func (b *Backend) failedCreate(ctx context.Context, spec backend.Spec, err error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	inst := backend.Instance{ID: spec.InstanceID, Name: spec.Name, Proof: spec.Proof}
	rerr := b.removeProven(ctx, inst)
	if rerr != nil {
		return fmt.Errorf("instance %q did not become ready: %v; removing what the create made failed too: %v", spec.Name, err, rerr)
	}
	var start *backend.StartError
	if errors.As(err, &start) {
		return fmt.Errorf("starting instance %q: %w", spec.Name, err)
	}
	return err
}
