package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"text/template"
	"time"
)

// The kubernetes group: create-to-ready and destroy of N instances on the
// kubernetes backend against kubectl doing the same to the same objects.

var (
	flagKubeNs = flag.String("kube-n", "1,5", "instance counts for kubernetes create/destroy")
	// A pod's start goes through the scheduler, the volume provisioner and
	// the kubelet: slower and more variable than a container's.
	flagKubeReps = flag.Int("kube-reps", 5, "repetitions of the kubernetes rows; at least 3")
)

const (
	kubeGroup = "kubernetes"
	// kubePoll is the floor's pause between login attempts on a new
	// instance: half the backend's (ReadyPollInterval, 100 ms).
	kubePoll = 50 * time.Millisecond
	// kubectlTimeout bounds one kubectl command; a destroy waits for the
	// pods to stop.
	kubectlTimeout = 3 * time.Minute
)

// kubeEnv is the cluster from the test environment's env file.
type kubeEnv struct {
	kubeconfig, image, storageClass, kubectl string
}

// kubeWanted: the group runs when -only names it, and in a run of all
// groups when the env file has a cluster.
func kubeWanted() bool {
	if *flagOnly == "" {
		return os.Getenv("POSTGRAAS_TEST_KUBECONFIG") != ""
	}
	return wanted(kubeGroup)
}

// setupKube reads the cluster's settings and checks that its API server
// answers kubectl.
func (b *bench) setupKube(ctx context.Context) error {
	var missing []string
	get := func(k string) string {
		v := os.Getenv(k)
		if v == "" {
			missing = append(missing, k)
		}
		return v
	}
	b.kube = &kubeEnv{
		kubeconfig:   get("POSTGRAAS_TEST_KUBECONFIG"),
		image:        get("POSTGRAAS_TEST_KUBE_IMAGE"),
		storageClass: get("POSTGRAAS_TEST_KUBE_STORAGE_CLASS"),
		kubectl:      get("POSTGRAAS_TEST_KUBECTL"),
	}
	if len(missing) > 0 {
		return fmt.Errorf("the kubernetes group needs %s: source the env file of a test environment with its kubernetes part "+
			"(.ci/testenv.sh up kubernetes prints its path)", strings.Join(missing, ", "))
	}
	if _, err := b.kubectl(ctx, nil, "get", "--raw", "/readyz"); err != nil {
		return fmt.Errorf("the Kubernetes API server of %s: %w", b.kube.kubeconfig, err)
	}
	return nil
}

// kubectl runs the test environment's kubectl on its kubeconfig and
// returns its standard output; an error carries only its standard error
// (the output of an apply holds the Secret's data).
func (b *bench) kubectl(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, kubectlTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, b.kube.kubectl, append([]string{"--kubeconfig", b.kube.kubeconfig}, args...)...)
	if stdin != nil {
		c.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return nil, fmt.Errorf("kubectl %s: %v\n%s", args[0], err, tail(stderr.String(), 20))
	}
	return stdout.Bytes(), nil
}

// kubeManifest is what the backend's Create makes of each instance
// (internal/backend/kubernetes create.go): the bootstrap Secret, the
// StatefulSet with its claim template and the Service, with the same
// labels, annotations (a proof of the same length), resources and
// settings. What the backend does besides (owner references, the
// Secret's deletion once the instance answers) is part of its cost.
var kubeManifest = template.Must(template.New("manifest").Funcs(template.FuncMap{"q": quoteYAML, "meta": metaYAML}).Parse(`
apiVersion: v1
kind: List
items:
{{- range .Instances}}
- apiVersion: v1
  kind: Secret
  metadata:
    name: {{.Name}}-bootstrap
{{meta 4 . ""}}
  type: Opaque
  immutable: true
  stringData:
    password: {{q $.Password}}
- apiVersion: apps/v1
  kind: StatefulSet
  metadata:
    name: {{.Name}}
{{meta 4 . $.Image}}
  spec:
    replicas: 1
    serviceName: {{.Name}}
    selector:
      matchLabels:
        postgraas.io/name: {{.Name}}
    persistentVolumeClaimRetentionPolicy:
      whenDeleted: Retain
      whenScaled: Retain
    template:
      metadata:
{{meta 8 . ""}}
      spec:
        terminationGracePeriodSeconds: 10
        enableServiceLinks: false
        automountServiceAccountToken: false
        containers:
        - name: postgres
          image: {{q $.Image}}
          imagePullPolicy: IfNotPresent
          env:
          - {name: POSTGRES_USER, value: {{.Name}}}
          - {name: POSTGRES_DB, value: {{.Name}}}
          - name: POSTGRES_PASSWORD
            valueFrom:
              secretKeyRef: {name: {{.Name}}-bootstrap, key: password, optional: true}
          ports:
          - {name: postgres, containerPort: 5432}
          resources:
            requests: {cpu: 100m, memory: 256Mi}
            limits: {memory: 1Gi}
          volumeMounts:
          - {name: data, mountPath: /var/lib/postgresql/data}
    volumeClaimTemplates:
    - metadata:
        name: data
{{meta 8 . ""}}
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: {{q $.StorageClass}}
        resources:
          requests: {storage: 1Gi}
- apiVersion: v1
  kind: Service
  metadata:
    name: {{.Name}}
{{meta 4 . ""}}
  spec:
    type: ClusterIP
    selector:
      postgraas.io/name: {{.Name}}
    ports:
    - {name: postgres, port: 5432, targetPort: 5432}
{{- end}}
`))

// metaYAML is the labels and annotations of every object of an instance,
// indented by indent; image, when set, is the StatefulSet's annotation.
func metaYAML(indent int, in kubeInstance, image string) string {
	lines := []string{
		"labels:",
		"  app.kubernetes.io/managed-by: postgraas",
		`  postgraas.io/instance: "true"`,
		fmt.Sprintf(`  postgraas.io/instance-id: "%d"`, in.ID),
		"  postgraas.io/name: " + in.Name,
		"annotations:",
		"  postgraas.io/proof: " + in.Proof,
	}
	if image != "" {
		lines = append(lines, "  postgraas.io/image: "+quoteYAML(image))
	}
	pad := strings.Repeat(" ", indent)
	return pad + strings.Join(lines, "\n"+pad)
}

// quoteYAML is s as a YAML double-quoted scalar (JSON's quoting is YAML's).
func quoteYAML(s string) string {
	q, _ := json.Marshal(s)
	return string(q)
}

type kubeInstance struct {
	ID          int
	Name, Proof string
}

func (b *bench) kubeManifest(names []string) ([]byte, error) {
	data := struct {
		Instances                     []kubeInstance
		Password, Image, StorageClass string
	}{Password: b.password, Image: b.kube.image, StorageClass: b.kube.storageClass}
	for i, name := range names {
		// The proof annotation of the backend is an HMAC in hex.
		data.Instances = append(data.Instances, kubeInstance{ID: i, Name: name, Proof: randHex(32)})
	}
	var buf bytes.Buffer
	if err := kubeManifest.Execute(&buf, data); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// floorKubeCreate applies every instance's objects with one `kubectl
// apply`, then logs in as each tenant on its Service's cluster IP every
// kubePoll until SELECT 1 answers, all at once. It returns when all are
// ready.
func (b *bench) floorKubeCreate(ctx context.Context, names []string) (time.Duration, error) {
	manifest, err := b.kubeManifest(names)
	if err != nil {
		return 0, err
	}
	for _, name := range names {
		b.setLive(b.liveKube, name, true)
	}
	start := time.Now()
	out, err := b.kubectl(ctx, manifest, "apply", "-f", "-", "-o", "json")
	if err != nil {
		return 0, fmt.Errorf("floor: %w", err)
	}
	var applied struct {
		Items []struct {
			Kind     string
			Metadata struct{ Name string }
			Spec     struct{ ClusterIP string }
		}
	}
	if err := json.Unmarshal(out, &applied); err != nil {
		return 0, fmt.Errorf("floor: reading what kubectl apply made: %w", err)
	}
	ips := map[string]string{}
	for _, it := range applied.Items {
		if it.Kind == "Service" {
			ips[it.Metadata.Name] = it.Spec.ClusterIP
		}
	}
	if _, err := allAtOnce(names, func(_ int, name string) error {
		if ips[name] == "" {
			return fmt.Errorf("floor: Service %s has no cluster IP in kubectl apply's output", name)
		}
		return b.untilLogin(ctx, ips[name], 5432, name, kubePoll)
	}); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// floorKubeDestroy deletes every instance's objects with one `kubectl
// delete`, which waits until they are gone, in the backend's order: the
// StatefulSet, its pod, the Service, the Secret and the claim (whose
// protection holds it until the pod has stopped).
func (b *bench) floorKubeDestroy(ctx context.Context, names []string) (time.Duration, error) {
	args := []string{"delete", "--wait", "--ignore-not-found"}
	for _, name := range names {
		args = append(args, "statefulset/"+name, "pod/"+name+"-0", "service/"+name, "secret/"+name+"-bootstrap",
			"persistentvolumeclaim/data-"+name+"-0")
	}
	start := time.Now()
	if _, err := b.kubectl(ctx, nil, args...); err != nil {
		return 0, fmt.Errorf("floor: %w", err)
	}
	took := time.Since(start)
	for _, name := range names {
		b.setLive(b.liveKube, name, false)
	}
	return took, nil
}

// kubeProviderHCL is the provider block's kubernetes settings.
func (b *bench) kubeProviderHCL() string {
	return fmt.Sprintf("  kubernetes = {\n    kubeconfig    = %q\n    image         = %q\n    storage_class = %q\n  }\n",
		b.kube.kubeconfig, b.kube.image, b.kube.storageClass)
}
