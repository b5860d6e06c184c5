package provider

import (
	"regexp"

	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/postgraas/terraform-provider-postgraas/internal/backend/kubernetes"
)

// kubernetesModel is the provider's `kubernetes` block.
type kubernetesModel struct {
	Kubeconfig     types.String `tfsdk:"kubeconfig"`
	Context        types.String `tfsdk:"context"`
	Namespace      types.String `tfsdk:"namespace"`
	StorageClass   types.String `tfsdk:"storage_class"`
	StorageSize    types.String `tfsdk:"storage_size"`
	Image          types.String `tfsdk:"image"`
	ServiceType    types.String `tfsdk:"service_type"`
	AdvertisedHost types.String `tfsdk:"advertised_host"`
	RequestsCPU    types.String `tfsdk:"requests_cpu"`
	RequestsMemory types.String `tfsdk:"requests_memory"`
	LimitsCPU      types.String `tfsdk:"limits_cpu"`
	LimitsMemory   types.String `tfsdk:"limits_memory"`
}

func quantitySetting(desc, env, def string) schema.StringAttribute {
	return stringSetting(desc+" A Kubernetes quantity.", env, def,
		stringvalidator.RegexMatches(quantityPattern, "must be a Kubernetes quantity such as 500m, 2, 256Mi or 1Gi"))
}

func kubernetesSchema() schema.SingleNestedAttribute {
	return schema.SingleNestedAttribute{
		MarkdownDescription: "The Kubernetes cluster that the `kubernetes` backend runs one PostgreSQL server per instance on: a " +
			"StatefulSet of one replica with a volume from its claim template, and a Service. The provider must reach the " +
			"Service's address (see `service_type` and `advertised_host`) to check that a new instance takes its login.",
		Optional: true,
		Attributes: map[string]schema.Attribute{
			"kubeconfig": stringSetting("Path of the kubeconfig file. Unset: `KUBECONFIG`, then `~/.kube/config`, then the "+
				"service account of the pod the provider runs in.", "POSTGRAAS_KUBECONFIG", ""),
			"context": stringSetting("kubeconfig context to use. Unset: its current context.", "POSTGRAAS_KUBE_CONTEXT", ""),
			"namespace": stringSetting("Namespace of the instances' objects. Unset: the context's namespace, else `default`.",
				"POSTGRAAS_KUBE_NAMESPACE", "", stringvalidator.RegexMatches(dnsLabelPattern, "must be a DNS label (a namespace name)")),
			"storage_class": stringSetting("StorageClass of each instance's data volume. Unset: the cluster's default class.",
				"POSTGRAAS_KUBE_STORAGE_CLASS", ""),
			"storage_size": quantitySetting("Size of each instance's data volume.", "POSTGRAAS_KUBE_STORAGE_SIZE", "1Gi"),
			"image": stringSetting("Default image for new instances; any image honouring the official `postgres` image's "+
				"`POSTGRES_USER`/`POSTGRES_PASSWORD`/`POSTGRES_DB` contract, with `psql` and `env` on its PATH.",
				"POSTGRAAS_KUBE_IMAGE", "postgres:17"),
			"service_type": stringSetting("Type of each instance's Service: `ClusterIP` (reached from inside the cluster, or "+
				"where the service network is routed), `NodePort` (the node's address and the node port) or `LoadBalancer` "+
				"(the load balancer's address).", "POSTGRAAS_KUBE_SERVICE_TYPE", kubernetes.ServiceClusterIP,
				stringvalidator.OneOf(kubernetes.ServiceTypes...)),
			"advertised_host": stringSetting("Host reported as instances' `host`, and the one the provider connects to: for "+
				"example a DNS name of the nodes or of an ingress. With `NodePort` or `LoadBalancer` the port is then the node "+
				"port. Unset: the Service's cluster IP, the node's IP or the load balancer's address.",
				"POSTGRAAS_KUBE_ADVERTISED_HOST", "", hostValidator{}),
			"requests_cpu": quantitySetting("CPU request of each instance's container.", "POSTGRAAS_KUBE_REQUESTS_CPU",
				kubernetes.DefaultRequestsCPU),
			"requests_memory": quantitySetting("Memory request of each instance's container.", "POSTGRAAS_KUBE_REQUESTS_MEMORY",
				kubernetes.DefaultRequestsMemory),
			"limits_cpu": quantitySetting("CPU limit of each instance's container; `0` or unset: none.", "POSTGRAAS_KUBE_LIMITS_CPU", ""),
			"limits_memory": quantitySetting("Memory limit of each instance's container; `0`: none.", "POSTGRAAS_KUBE_LIMITS_MEMORY",
				kubernetes.DefaultLimitsMemory),
		},
	}
}

// kubernetesSettings resolves the block against the environment.
func kubernetesSettings(s *setting, m kubernetesModel) kubernetes.Config {
	kp := path.Root("kubernetes")
	cfg := kubernetes.Config{
		Kubeconfig:     s.str(m.Kubeconfig, "POSTGRAAS_KUBECONFIG", ""),
		Context:        s.str(m.Context, "POSTGRAAS_KUBE_CONTEXT", ""),
		Namespace:      s.str(m.Namespace, "POSTGRAAS_KUBE_NAMESPACE", ""),
		StorageClass:   s.str(m.StorageClass, "POSTGRAAS_KUBE_STORAGE_CLASS", ""),
		StorageSize:    s.str(m.StorageSize, "POSTGRAAS_KUBE_STORAGE_SIZE", ""),
		Image:          s.str(m.Image, "POSTGRAAS_KUBE_IMAGE", ""),
		ServiceType:    s.str(m.ServiceType, "POSTGRAAS_KUBE_SERVICE_TYPE", kubernetes.ServiceClusterIP),
		AdvertisedHost: s.host(m.AdvertisedHost, kp.AtName("advertised_host"), "POSTGRAAS_KUBE_ADVERTISED_HOST", "", false),
		RequestsCPU:    s.str(m.RequestsCPU, "POSTGRAAS_KUBE_REQUESTS_CPU", ""),
		RequestsMemory: s.str(m.RequestsMemory, "POSTGRAAS_KUBE_REQUESTS_MEMORY", ""),
		LimitsCPU:      s.str(m.LimitsCPU, "POSTGRAAS_KUBE_LIMITS_CPU", ""),
		LimitsMemory:   s.str(m.LimitsMemory, "POSTGRAAS_KUBE_LIMITS_MEMORY", ""),
	}
	s.oneOf(cfg.ServiceType, kp.AtName("service_type"), "POSTGRAAS_KUBE_SERVICE_TYPE", kubernetes.ServiceTypes...)
	return cfg
}

var (
	// quantityPattern is the Kubernetes quantity syntax (resource.ParseQuantity
	// checks the value again when the backend is built).
	quantityPattern = regexp.MustCompile(`^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+)?$`)
	dnsLabelPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

var _ validator.String = hostValidator{}
