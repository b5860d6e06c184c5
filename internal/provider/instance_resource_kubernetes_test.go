package provider

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"
	"github.com/jackc/pgx/v5"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/postgraas/terraform-provider-postgraas/internal/pgsql"
)

var kubeEnv = []string{"POSTGRAAS_TEST_KUBECONFIG", "POSTGRAAS_TEST_KUBE_IMAGE"}

const kubeNamespace = "default"

// kubeConfig is a configuration on the kubernetes backend of the test
// cluster, with the image loaded into it.
func kubeConfig(providerExtra string, instances ...clusterInstance) string {
	s := fmt.Sprintf(`provider "postgraas" {
  backend = "kubernetes"
  kubernetes = {
    kubeconfig = %s
    image      = %s
    namespace  = %q
    %s
  }
}
`, hclString(os.Getenv("POSTGRAAS_TEST_KUBECONFIG")), hclString(os.Getenv("POSTGRAAS_TEST_KUBE_IMAGE")), kubeNamespace, providerExtra)
	for _, i := range instances {
		s += i.hcl()
	}
	return s
}

// newKubeInstance has a name that is a DNS label, as Kubernetes wants
// (and a Docker container name may be).
func newKubeInstance(label string) clusterInstance { return newDockerInstance(label) }

func kubeClient(t *testing.T) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("POSTGRAAS_TEST_KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// kubeTenant logs into an instance where its state says.
func kubeTenant(s *terraform.State, i *clusterInstance, password string) (pgsql.Target, error) {
	rs, ok := s.RootModule().Resources[i.address()]
	if !ok {
		return pgsql.Target{}, fmt.Errorf("%s not in state", i.address())
	}
	port, err := strconv.Atoi(rs.Primary.Attributes["port"])
	if err != nil {
		return pgsql.Target{}, err
	}
	return tenant(rs.Primary.Attributes["host"], port, i.db, i.user, password), nil
}

// kubeObjects names the objects with the instance's names that exist.
func kubeObjects(ctx context.Context, cs kubernetes.Interface, name string) ([]string, error) {
	var left []string
	for kind, get := range map[string]func() error{
		"StatefulSet " + name: func() error {
			_, err := cs.AppsV1().StatefulSets(kubeNamespace).Get(ctx, name, metav1.GetOptions{})
			return err
		},
		"Service " + name: func() error {
			_, err := cs.CoreV1().Services(kubeNamespace).Get(ctx, name, metav1.GetOptions{})
			return err
		},
		"Secret " + name + "-bootstrap": func() error {
			_, err := cs.CoreV1().Secrets(kubeNamespace).Get(ctx, name+"-bootstrap", metav1.GetOptions{})
			return err
		},
		"PersistentVolumeClaim data-" + name + "-0": func() error {
			_, err := cs.CoreV1().PersistentVolumeClaims(kubeNamespace).Get(ctx, "data-"+name+"-0", metav1.GetOptions{})
			return err
		},
	} {
		switch err := get(); {
		case err == nil:
			left = append(left, kind)
		case !apierrors.IsNotFound(err):
			return nil, err
		}
	}
	return left, nil
}

// checkKubeGone is a CheckDestroy: every object and the row gone.
func checkKubeGone(t *testing.T, insts ...*clusterInstance) resource.TestCheckFunc {
	return func(*terraform.State) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cs := kubeClient(t)
		for _, i := range insts {
			left, err := kubeObjects(ctx, cs, i.name)
			if err != nil {
				return err
			}
			if len(left) > 0 {
				return fmt.Errorf("after destroy of %s: %v still there", i.name, left)
			}
			if n, err := metaRows(i.name); err != nil || n != 0 {
				return fmt.Errorf("%d rows named %s after destroy (%v)", n, i.name, err)
			}
		}
		return nil
	}
}

// checkKubeInstance logs in right after apply (no retry: apply returns only
// when the server takes the login) and checks the StatefulSet against the
// state: the recorded UID, the row's id, and no password in its spec.
func checkKubeInstance(t *testing.T, i *clusterInstance) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		target, err := kubeTenant(s, i, i.password)
		if err != nil {
			return err
		}
		if err := writeAndRead(target); err != nil {
			return fmt.Errorf("login right after apply: %w", err)
		}
		attrs := s.RootModule().Resources[i.address()].Primary.Attributes
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		sts, err := kubeClient(t).AppsV1().StatefulSets(kubeNamespace).Get(ctx, i.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if string(sts.UID) != attrs["container_id"] || sts.Labels["postgraas.io/instance-id"] != attrs["id"] ||
			len(sts.Annotations["postgraas.io/proof"]) != 64 {
			return fmt.Errorf("StatefulSet UID %s labels %v annotations %v; state %v", sts.UID, sts.Labels, sts.Annotations, attrs)
		}
		for _, e := range sts.Spec.Template.Spec.Containers[0].Env {
			if e.Value == i.password || e.Name == "POSTGRES_PASSWORD" && e.ValueFrom == nil {
				return fmt.Errorf("the pod spec holds a password in %s", e.Name)
			}
		}
		return nil
	}
}

// The life of two instances on the real cluster: created in one apply, in
// parallel, each ready on return; imported; rotated; one deleted out of
// band (drift) and recreated; destroy refused while a session is open,
// then forced.
func TestAccInstance_kubernetesLifecycle(t *testing.T) {
	a, b := newKubeInstance("a"), newKubeInstance("b")
	rotated := a
	rotated.password = "rotated 'pw' é"
	forced := b
	forced.extra = "force_destroy = true"
	var firstUID string
	var session *pgx.Conn
	t.Cleanup(func() {
		if session != nil {
			_ = session.Close(context.Background())
		}
	})
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, kubeEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkKubeGone(t, &a, &b),
		Steps: []resource.TestStep{
			{
				Config: kubeConfig("", a, b),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(a.address(), tfjsonpath.New("backend"), knownvalue.StringExact("kubernetes")),
					statecheck.ExpectKnownValue(a.address(), tfjsonpath.New("status"), knownvalue.StringExact("running")),
					statecheck.ExpectKnownValue(a.address(), tfjsonpath.New("image"), knownvalue.StringExact(os.Getenv("POSTGRAAS_TEST_KUBE_IMAGE"))),
					statecheck.ExpectKnownValue(a.address(), tfjsonpath.New("sslmode"), knownvalue.StringExact("disable")),
				},
				Check: resource.ComposeAggregateTestCheckFunc(
					checkKubeInstance(t, &a),
					checkKubeInstance(t, &b),
					func(s *terraform.State) error {
						firstUID = s.RootModule().Resources[a.address()].Primary.Attributes["container_id"]
						return nil
					},
				),
			},
			{
				ResourceName:            a.address(),
				ImportState:             true,
				ImportStateId:           a.name,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"db_password", "connection_uri"},
			},
			{
				Config: kubeConfig("", rotated, b),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(a.address(), plancheck.ResourceActionUpdate),
				}},
				Check: func(s *terraform.State) error {
					old, _ := kubeTenant(s, &a, a.password)
					if err := loginFails(old, pgsql.CodeInvalidPassword); err != nil {
						return fmt.Errorf("old password: %w", err)
					}
					current, _ := kubeTenant(s, &a, rotated.password)
					return writeAndRead(current)
				},
			},
			{
				// Drift: the StatefulSet deleted behind Terraform's back.
				PreConfig: func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					mustDo(t, kubeClient(t).AppsV1().StatefulSets(kubeNamespace).Delete(ctx, a.name, metav1.DeleteOptions{}))
				},
				Config: kubeConfig("", rotated, b),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(a.address(), plancheck.ResourceActionCreate),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(
					checkKubeInstance(t, &rotated),
					func(s *terraform.State) error {
						if uid := s.RootModule().Resources[a.address()].Primary.Attributes["container_id"]; uid == firstUID {
							return fmt.Errorf("recreated instance has the old StatefulSet's UID %s", uid)
						}
						return nil
					},
				),
			},
			{
				// Another session open on b: its destroy is refused.
				PreConfig: func() {
					var err error
					session, err = tenantFromMeta(b).Connect(context.Background())
					mustDo(t, err)
				},
				Config:      kubeConfig("", rotated),
				ExpectError: regexp.MustCompile(`(?s)Instance still in use.*1 other session`),
			},
			{
				Config: kubeConfig("", rotated, forced),
				Check:  checkKubeInstance(t, &b),
			},
			{
				// Forced: the session is ended and b goes.
				Config: kubeConfig("", rotated),
				Check: func(*terraform.State) error {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					left, err := kubeObjects(ctx, kubeClient(t), b.name)
					if err == nil && len(left) > 0 {
						err = fmt.Errorf("after the forced destroy of %s: %v", b.name, left)
					}
					return err
				},
			},
		},
	})
}

// tenantFromMeta is the login to an instance where its meta DB row says.
func tenantFromMeta(i clusterInstance) pgsql.Target {
	var host string
	var port int
	_ = withConn(metaDB(), func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT hostname, port FROM db_instance WHERE postgraas_instance_name = $1`, i.name).Scan(&host, &port)
	})
	return tenant(host, port, i.db, i.user, i.password)
}

// Five instances in one apply, on NodePort Services: all ready on return.
func TestAccInstance_kubernetesFiveAtOnce(t *testing.T) {
	var insts []clusterInstance
	var checks []resource.TestCheckFunc
	var ptrs []*clusterInstance
	for n := range 5 {
		insts = append(insts, newKubeInstance(fmt.Sprintf("i%d", n)))
	}
	for n := range insts {
		ptrs = append(ptrs, &insts[n])
		checks = append(checks, checkKubeInstance(t, &insts[n]),
			resource.TestCheckResourceAttr(insts[n].address(), "host", os.Getenv("POSTGRAAS_TEST_KUBE_NODE_IP")))
	}
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, append(kubeEnv, "POSTGRAAS_TEST_KUBE_NODE_IP")...) },
		ProtoV6ProviderFactories: testAccProviders,
		CheckDestroy:             checkKubeGone(t, ptrs...),
		Steps: []resource.TestStep{{
			Config: kubeConfig(`service_type = "NodePort"`, insts...),
			Check:  resource.ComposeAggregateTestCheckFunc(checks...),
		}},
	})
}

// An unlabelled StatefulSet with the instance's name is someone else's: the
// create is a conflict naming it, and it is left exactly as it was.
func TestAccInstance_kubernetesForeignStatefulSet(t *testing.T) {
	i := newKubeInstance("test")
	var foreign *appsv1.StatefulSet
	resource.ParallelTest(t, resource.TestCase{
		PreCheck: func() {
			testAccPreCheck(t, kubeEnv...)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			labels := map[string]string{"app": "theirs-" + i.name}
			var err error
			foreign, err = kubeClient(t).AppsV1().StatefulSets(kubeNamespace).Create(ctx, &appsv1.StatefulSet{
				ObjectMeta: metav1.ObjectMeta{Name: i.name, Labels: labels},
				Spec: appsv1.StatefulSetSpec{
					Replicas: new(int32), ServiceName: i.name,
					Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: podTemplate(labels),
				},
			}, metav1.CreateOptions{})
			mustDo(t, err)
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				_ = kubeClient(t).AppsV1().StatefulSets(kubeNamespace).Delete(ctx, i.name, metav1.DeleteOptions{})
			})
		},
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{{
			Config:      kubeConfig("", i),
			ExpectError: regexp.MustCompile(`(?s)The StatefulSet already exists.*StatefulSet "` + regexp.QuoteMeta(i.name) + `"\s+already\s+exists`),
		}},
		CheckDestroy: func(*terraform.State) error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			got, err := kubeClient(t).AppsV1().StatefulSets(kubeNamespace).Get(ctx, i.name, metav1.GetOptions{})
			switch {
			case err != nil:
				return fmt.Errorf("the foreign StatefulSet: %w", err)
			case got.UID != foreign.UID || got.ResourceVersion != foreign.ResourceVersion && got.Generation != foreign.Generation:
				return fmt.Errorf("the foreign StatefulSet was replaced or changed: %+v", got.ObjectMeta)
			case len(got.Annotations) > 0:
				return fmt.Errorf("the foreign StatefulSet got annotations %v", got.Annotations)
			}
			if n, err := metaRows(i.name); err != nil || n != 0 {
				return errors.Join(err, fmt.Errorf("%d rows named %s after the conflict", n, i.name))
			}
			return nil
		},
	})
}

// podTemplate is a pod that never runs (the StatefulSet has no replicas).
func podTemplate(labels map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: os.Getenv("POSTGRAAS_TEST_KUBE_IMAGE")}}},
	}
}

// A name that cannot name Kubernetes objects is refused at plan time, on
// the name attribute, before anything is made.
func TestAccInstance_kubernetesNameAtPlan(t *testing.T) {
	i := newKubeInstance("test")
	i.name = "Not_A_DNS_Label"
	resource.ParallelTest(t, resource.TestCase{
		PreCheck:                 func() { testAccPreCheck(t, kubeEnv...) },
		ProtoV6ProviderFactories: testAccProviders,
		Steps: []resource.TestStep{{
			Config:      kubeConfig("", i),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(`(?s)Invalid instance settings for the kubernetes backend.*name.*must be a DNS label`),
		}},
	})
}
