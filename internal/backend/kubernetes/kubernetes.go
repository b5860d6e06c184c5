// Package kubernetes is the backend that gives every instance its own
// PostgreSQL server on a Kubernetes cluster: a StatefulSet of one replica
// with a volume from its claim template, a Service, and a one-time
// bootstrap Secret. As on docker, the tenant is the server's superuser.
//
// Ownership: every object carries the instance's proof as an annotation
// (an HMAC is longer than a label value may be), and the row records the
// StatefulSet's UID, which Kubernetes never reuses. Every delete names the
// UID (and resource version) it proved in a precondition, so the API server
// itself refuses to remove an object that changed since it was checked.
package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend"
	"github.com/postgraas/terraform-provider-postgraas/internal/backend/selfhosted"
	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
	"github.com/postgraas/terraform-provider-postgraas/internal/reach"
)

// Labels and annotations on every object of an instance.
const (
	LabelManagedBy  = "app.kubernetes.io/managed-by" // "postgraas"
	LabelInstance   = "postgraas.io/instance"        // "true"
	LabelInstanceID = "postgraas.io/instance-id"
	// LabelName selects the instance's pod; it is the StatefulSet's name.
	LabelName = "postgraas.io/name"
	// AnnotationProof carries the ownership proof of the meta DB row (see
	// backend.Proof).
	AnnotationProof = "postgraas.io/proof"
	AnnotationImage = "postgraas.io/image"
	managedBy       = "postgraas"
)

// Service types.
const (
	ServiceClusterIP    = string(corev1.ServiceTypeClusterIP)
	ServiceNodePort     = string(corev1.ServiceTypeNodePort)
	ServiceLoadBalancer = string(corev1.ServiceTypeLoadBalancer)
)

// ServiceTypes are the accepted service types.
var ServiceTypes = []string{ServiceClusterIP, ServiceNodePort, ServiceLoadBalancer}

const (
	defaultImage        = "postgres:17" // as the docker backend
	defaultNamespace    = "default"
	defaultStorageSize  = "1Gi"
	defaultPollInterval = 100 * time.Millisecond
	// DefaultRequestsCPU and the others are the container's resources
	// when none are configured: enough for a test database, with a memory
	// limit so one instance cannot starve a node. No CPU limit: throttling
	// a test database helps nobody.
	DefaultRequestsCPU    = "100m"
	DefaultRequestsMemory = "256Mi"
	DefaultLimitsMemory   = "1Gi"

	pgPort        = 5432
	containerName = "postgres"
	volumeName    = "data"
	// pgdataMount is where the volume goes: the official image's PGDATA.
	pgdataMount = "/var/lib/postgresql/data"
	// attemptTimeout bounds one login attempt while waiting for readiness.
	attemptTimeout = 2 * time.Second
	// cleanupTimeout bounds removal after a failure, on a context detached
	// from the caller's (which may be the one that expired).
	cleanupTimeout = 2 * time.Minute
	// podCheckInterval is how often the pod is looked at while a login
	// is waited for: whether it failed in a way waiting cannot mend.
	podCheckInterval = 500 * time.Millisecond
	logTail          = 30
	// maxNameLength keeps the pod's controller-revision-hash label
	// ("<name>-<10 characters>") within a label value's 63.
	maxNameLength = 52
)

// Config configures the backend. Zero values mean the documented defaults.
type Config struct {
	// Kubeconfig is the kubeconfig file; "" follows client-go's rules
	// (KUBECONFIG, ~/.kube/config), then the in-cluster service account.
	Kubeconfig string
	// Context is the kubeconfig context; "" means its current one.
	Context string
	// Namespace is where instances go; "" means the context's namespace,
	// else "default".
	Namespace string
	// StorageClass of the data volume; "" means the cluster's default.
	StorageClass string
	// StorageSize of the data volume; "" means 1Gi.
	StorageSize string
	// Image is used when a spec names none; "" means postgres:17.
	Image string
	// ServiceType is ClusterIP (default), NodePort or LoadBalancer.
	ServiceType string
	// AdvertisedHost is the host users and the provider connect to; ""
	// means the service's address: its cluster IP, the node's IP for a
	// NodePort, the load balancer's address.
	AdvertisedHost string
	// Resources of the postgres container; "" means the defaults above
	// ("0" for a limit: none).
	RequestsCPU, RequestsMemory, LimitsCPU, LimitsMemory string
	// ReadyPollInterval is the pause between login attempts while a new
	// instance starts; 0 means 100ms.
	ReadyPollInterval time.Duration
	// ConnectTimeout bounds the API server's first answer; 0 means
	// reach.DefaultConnectTimeout.
	ConnectTimeout time.Duration
}

// Backend implements backend.Backend on a Kubernetes cluster. It is safe
// for concurrent use.
type Backend struct {
	cfg       Config
	rest      *rest.Config
	cs        k8s.Interface
	namespace string
	resources corev1.ResourceRequirements
	storage   resource.Quantity
	// server is the API server's address as diagnostics show it.
	server string
}

var _ backend.Backend = (*Backend)(nil)

// New reads the kubeconfig (a local file; nothing is contacted) and builds
// the client. A plan must work while the cluster is down.
func New(cfg Config) (*Backend, error) {
	if p, ok := strings.CutPrefix(cfg.Kubeconfig, "~/"); ok {
		// As kubectl's --kubeconfig, for a path from the environment.
		if home, err := os.UserHomeDir(); err == nil {
			cfg.Kubeconfig = filepath.Join(home, p)
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = cfg.Kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: cfg.Context})
	rc, err := cc.ClientConfig()
	if err != nil {
		if cfg.Kubeconfig != "" || cfg.Context != "" || !clientcmd.IsEmptyConfig(err) {
			return nil, fmt.Errorf("reading the kubeconfig: %w", err)
		}
		if rc, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("no kubeconfig found (KUBECONFIG, ~/.kube/config) and not running in a cluster: %w", err)
		}
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = reach.DefaultConnectTimeout
	}
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "terraform-provider-postgraas"
	// Dial, not the whole request: a watch or a long delete may take longer.
	rc.Dial = (&net.Dialer{Timeout: cfg.ConnectTimeout}).DialContext
	// Terraform runs 10 operations at once, each polling: client-go's
	// default of 5 requests per second would queue them.
	rc.QPS, rc.Burst = 50, 100
	cs, err := k8s.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("configuring the kubernetes client for %s: %w", rc.Host, err)
	}
	ns := cfg.Namespace
	if ns == "" {
		if n, _, err := cc.Namespace(); err == nil && n != "" {
			ns = n
		} else {
			ns = defaultNamespace
		}
	}
	if cfg.Image == "" {
		cfg.Image = defaultImage
	}
	if cfg.ServiceType == "" {
		cfg.ServiceType = ServiceClusterIP
	}
	if cfg.ReadyPollInterval <= 0 {
		cfg.ReadyPollInterval = defaultPollInterval
	}
	b := &Backend{cfg: cfg, rest: rc, cs: cs, namespace: ns, server: rc.Host}
	if err := b.parseSettings(); err != nil {
		return nil, err
	}
	return b, nil
}

// parseSettings checks the settings that New cannot leave to the cluster.
func (b *Backend) parseSettings() error {
	switch b.cfg.ServiceType {
	case ServiceClusterIP, ServiceNodePort, ServiceLoadBalancer:
	default:
		return fmt.Errorf("service type %q is not one of %s", b.cfg.ServiceType, strings.Join(ServiceTypes, ", "))
	}
	if errs := validation.IsDNS1123Label(b.namespace); len(errs) > 0 {
		return fmt.Errorf("namespace %q: %s", b.namespace, strings.Join(errs, "; "))
	}
	size := b.cfg.StorageSize
	if size == "" {
		size = defaultStorageSize
	}
	q, err := resource.ParseQuantity(size)
	if err != nil {
		return fmt.Errorf("storage size %q: %w", size, err)
	}
	b.storage = q
	b.resources = corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	for _, r := range []struct {
		list     corev1.ResourceList
		name     corev1.ResourceName
		val, def string
		what     string
	}{
		{b.resources.Requests, corev1.ResourceCPU, b.cfg.RequestsCPU, DefaultRequestsCPU, "requests_cpu"},
		{b.resources.Requests, corev1.ResourceMemory, b.cfg.RequestsMemory, DefaultRequestsMemory, "requests_memory"},
		{b.resources.Limits, corev1.ResourceCPU, b.cfg.LimitsCPU, "", "limits_cpu"},
		{b.resources.Limits, corev1.ResourceMemory, b.cfg.LimitsMemory, DefaultLimitsMemory, "limits_memory"},
	} {
		v := r.val
		if v == "" {
			v = r.def
		}
		if v == "" || v == "0" {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return fmt.Errorf("%s %q: %w", r.what, v, err)
		}
		r.list[r.name] = q
	}
	return nil
}

// Namespace is where the backend puts instances.
func (b *Backend) Namespace() string { return b.namespace }

// Kind implements backend.Backend.
func (b *Backend) Kind() string { return backend.KindKubernetes }

// StatusAfterCreate implements backend.Backend.
func (b *Backend) StatusAfterCreate() string { return "running" }

// TakesImage implements backend.Backend.
func (b *Backend) TakesImage() bool { return true }

// CheckSpec implements backend.Backend: the instance's name names its
// StatefulSet, Service and pod, so it must be a DNS label short enough for
// the labels Kubernetes derives from it.
func (b *Backend) CheckSpec(spec backend.Spec) error {
	if spec.Name == "" {
		return nil // not known yet (plan)
	}
	if errs := validation.IsDNS1123Label(spec.Name); len(errs) > 0 {
		return &backend.SpecError{Attribute: "name", Err: fmt.Errorf("on the kubernetes backend the name must be a DNS label "+
			"(lower case letters, digits and '-', starting and ending with a letter or digit): %s", strings.Join(errs, "; "))}
	}
	if len(spec.Name) > maxNameLength {
		return &backend.SpecError{Attribute: "name", Err: fmt.Errorf("on the kubernetes backend the name may have at most %d "+
			"characters (the pod's controller-revision-hash label adds 11 to it), not %d", maxNameLength, len(spec.Name))}
	}
	return nil
}

// SameLogin implements backend.Backend.
func (b *Backend) SameLogin(x, y string) bool { return x == y }

// Close implements backend.Backend.
func (b *Backend) Close() {}

// Check implements backend.Checker: the API server answers and lets the
// provider's credentials list StatefulSets in the namespace.
func (b *Backend) Check(ctx context.Context) error {
	_, err := b.cs.AppsV1().StatefulSets(b.namespace).List(ctx, listOne(""))
	if err != nil {
		return b.apiError("listing StatefulSets", err)
	}
	return nil
}

// apiError says which API server and namespace failed, and how.
func (b *Backend) apiError(doing string, err error) error {
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the Kubernetes API server %s: %s in namespace %q: %w", b.server, doing, b.namespace, err)
	}
	return fmt.Errorf("%s in namespace %q: %w", doing, b.namespace, err)
}

// target is a login to the instance at host:port.
func target(host string, port int, user, password, dbname string) pgsql.Target {
	return selfhosted.Login(host, port, user, password, dbname, attemptTimeout)
}

func idLabel(id int64) string { return strconv.FormatInt(id, 10) }

func secretName(name string) string { return name + "-bootstrap" }

// claimName is the PVC the StatefulSet controller makes for its pod.
func claimName(name string) string { return volumeName + "-" + name + "-0" }

func podName(name string) string { return name + "-0" }
