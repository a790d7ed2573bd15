package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// kustomization is the part of kustomize's Kustomization the manifests use.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors"`
		IncludeTemplates bool              `json:"includeTemplates"`
	} `json:"labels"`
	Images []kustImage `json:"images"`
}

// kustImage is one entry of a Kustomization's images.
type kustImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName"`
	NewTag  string `json:"newTag"`
	Digest  string `json:"digest"`
}

// newObject returns an empty typed object for apiVersion and kind, or nil
// for kinds this test does not know (their schema is not checked).
func newObject(apiVersion, kind string) any {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}
	case "batch/v1 Job":
		return &batchv1.Job{}
	case "v1 Service":
		return &corev1.Service{}
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}
	case "v1 Secret":
		return &corev1.Secret{}
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "autoscaling/v2 HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}
	case "networking.k8s.io/v1 Ingress":
		return &networkingv1.Ingress{}
	case "kustomize.config.k8s.io/v1beta1 Kustomization":
		return &kustomization{}
	}
	return nil
}

// decodeStrict decodes a YAML document into a typed object, refusing any
// field the type does not have: the offline stand-in for the API server's
// schema validation.
func decodeStrict(doc, into any) error {
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(into)
}

// k8sObject is one decoded manifest.
type k8sObject struct {
	file, kind, name string
	obj              any
}

// k8sDir is the manifests of one directory (one kustomization).
type k8sDir struct {
	dir        string
	objects    []k8sObject
	configMaps map[string]*corev1.ConfigMap
	kust       *kustomization
}

func readK8sDirs(t *testing.T) []*k8sDir {
	t.Helper()
	byDir := map[string]*k8sDir{}
	for _, f := range yamlFiles(t, "k8s") {
		dir := filepath.Dir(f)
		d := byDir[dir]
		if d == nil {
			d = &k8sDir{dir: dir, configMaps: map[string]*corev1.ConfigMap{}}
			byDir[dir] = d
		}
		for i, doc := range readYAML(t, f) {
			m, _ := doc.(map[string]any)
			apiVersion, _ := m["apiVersion"].(string)
			kind, _ := m["kind"].(string)
			if apiVersion == "" || kind == "" {
				t.Errorf("%s: document %d has no apiVersion or kind", f, i+1)
				continue
			}
			obj := newObject(apiVersion, kind)
			if obj == nil {
				t.Logf("%s: %s %s: schema not checked (kind unknown to this test)", f, apiVersion, kind)
				continue
			}
			if err := decodeStrict(doc, obj); err != nil {
				t.Errorf("%s: %s: %v", f, kind, err)
				continue
			}
			meta, _ := m["metadata"].(map[string]any)
			name, _ := meta["name"].(string)
			d.objects = append(d.objects, k8sObject{file: f, kind: kind, name: name, obj: obj})
			switch o := obj.(type) {
			case *corev1.ConfigMap:
				d.configMaps[o.Name] = o
			case *kustomization:
				d.kust = o
			}
		}
	}
	var dirs []*k8sDir
	for _, k := range sortedKeys(byDir) {
		dirs = append(dirs, byDir[k])
	}
	return dirs
}

// podWorkload is a workload object's pod template and what surrounds it.
type podWorkload struct {
	obj       k8sObject
	template  *corev1.PodTemplateSpec
	replicas  int
	claims    []string // volumeClaimTemplates
	isService bool     // serves traffic (not a Job)
}

func (d *k8sDir) workloads() []podWorkload {
	var out []podWorkload
	for _, o := range d.objects {
		replicas := func(r *int32) int {
			if r == nil {
				return 1
			}
			return int(*r)
		}
		switch x := o.obj.(type) {
		case *appsv1.Deployment:
			out = append(out, podWorkload{obj: o, template: &x.Spec.Template, replicas: replicas(x.Spec.Replicas), isService: true})
		case *appsv1.StatefulSet:
			pw := podWorkload{obj: o, template: &x.Spec.Template, replicas: replicas(x.Spec.Replicas), isService: true}
			for _, c := range x.Spec.VolumeClaimTemplates {
				pw.claims = append(pw.claims, c.Name)
			}
			out = append(out, pw)
		case *batchv1.Job:
			out = append(out, podWorkload{obj: o, template: &x.Spec.Template, replicas: 1})
		}
	}
	return out
}

// isTwinlineImage reports whether a container runs the twinline image.
func isTwinlineImage(img string) bool {
	name := img
	if i := strings.LastIndexAny(name, ":@"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	return path.Base(name) == "twinline"
}

// secretPlaceholder stands for a value read from a Secret.
func secretPlaceholder(env string) string {
	if env == "TWINLINE_POSTGRES_URL" {
		return "postgres://twinline@postgres.invalid:5432/twinline"
	}
	return "secret"
}

// containerEnv resolves a container's environment: ConfigMaps of the same
// directory, secrets as placeholders.
func (d *k8sDir) containerEnv(t *testing.T, where string, c corev1.Container) map[string]string {
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm, ok := d.configMaps[ef.ConfigMapRef.Name]
			if !ok {
				t.Errorf("%s: envFrom ConfigMap %q is not in %s", where, ef.ConfigMapRef.Name, d.dir)
				continue
			}
			for k, v := range cm.Data {
				env[ef.Prefix+k] = v
			}
		case ef.SecretRef != nil:
			t.Errorf("%s: envFrom Secret %q hides which TWINLINE_* it sets: use env with secretKeyRef", where, ef.SecretRef.Name)
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = secretPlaceholder(e.Name)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, ok := d.configMaps[ref.Name]
			if !ok {
				t.Errorf("%s: %s from ConfigMap %s: not in %s", where, e.Name, ref.Name, d.dir)
				continue
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				t.Errorf("%s: %s from ConfigMap %s: no key %s", where, e.Name, ref.Name, ref.Key)
			}
			env[e.Name] = v
		default:
			env[e.Name] = "1"
		}
	}
	if e := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "TWINLINE_POSTGRES_URL" }); e >= 0 {
		if c.Env[e].ValueFrom == nil || c.Env[e].ValueFrom.SecretKeyRef == nil {
			t.Errorf("%s: TWINLINE_POSTGRES_URL must come from a Secret (secretKeyRef): it holds the password", where)
		}
	}
	return env
}

// TestKubernetes checks every manifest under deploy/k8s: the schema of each
// known kind (unknown fields fail), each twinline container against the
// binary (commands, flags, TWINLINE_* variables, role rules), probes on
// /readyz and /healthz, termination grace above preStop plus
// --shutdown-timeout, security context, resources, volumes, and that
// Services, PDBs, HPAs, Ingresses and the kustomization refer to what
// exists.
func TestKubernetes(t *testing.T) {
	im := readDockerfile(t)
	dirs := readK8sDirs(t)
	if len(dirs) < 2 {
		t.Fatalf("manifest directories %d: want single and scale", len(dirs))
	}
	for _, d := range dirs {
		t.Run(d.dir, func(t *testing.T) { checkK8sDir(t, d, im) })
	}
}

func checkK8sDir(t *testing.T, d *k8sDir, im image) {
	if d.kust == nil {
		t.Fatalf("%s: no kustomization.yaml", d.dir)
	}
	for _, r := range d.kust.Resources {
		if _, err := os.Stat(filepath.Join(d.dir, r)); err != nil {
			t.Errorf("%s/kustomization.yaml: resource %s: %v", d.dir, r, err)
		}
	}
	for name, cm := range d.configMaps {
		for k := range cm.Data {
			if k == "TWINLINE_POSTGRES_URL" || k == "TWINLINE_MQTT_BROKER" {
				t.Errorf("%s: ConfigMap %s holds %s, which may carry a password: use a Secret", d.dir, name, k)
			}
		}
	}

	roles := map[string]string{} // pod template name → role
	for _, pw := range d.workloads() {
		where := fmt.Sprintf("%s: %s %s", pw.obj.file, pw.obj.kind, pw.obj.name)
		spec := &pw.template.Spec
		for _, c := range spec.Containers {
			if !isTwinlineImage(c.Image) {
				continue
			}
			cwhere := where + " container " + c.Name
			if !slices.ContainsFunc(d.kust.Images, func(i kustImage) bool { return i.Name == c.Image }) {
				t.Errorf("%s: image %q has no images: entry in kustomization.yaml (the place to set the registry and tag)", cwhere, c.Image)
			}
			args := c.Args
			if len(c.Command) > 0 {
				if len(c.Command) != 1 || path.Base(c.Command[0]) != "twinline" {
					t.Errorf("%s: command %q: the image's entrypoint is twinline; set args only", cwhere, c.Command)
					continue
				}
			}
			if len(args) == 0 {
				args = im.cmd
			}
			w := workload{where: cwhere, args: args, env: d.containerEnv(t, cwhere, c), imageEnv: im.env}
			s, ok := w.check(t)
			if !ok {
				continue
			}
			checkK8sSecurity(t, cwhere, spec, c)
			if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
				// A Service named twinline-… would inject TWINLINE_…_PORT
				// variables, read as flags if a flag of that name existed.
				t.Errorf("%s: set enableServiceLinks: false (service links put TWINLINE_* variables into the environment)", cwhere)
			}
			switch s.command {
			case "serve":
				if !pw.isService {
					t.Errorf("%s: twinline serve in a %s", cwhere, pw.obj.kind)
				}
				checkServe(t, w, s)
				checkK8sServe(t, cwhere, pw, c, s)
				roles[pw.obj.name] = s.get("role")
			case "migrate":
				if strings.TrimSpace(s.get("postgres-url")) == "" {
					t.Errorf("%s: twinline migrate without TWINLINE_POSTGRES_URL", cwhere)
				}
				if pw.isService {
					t.Errorf("%s: twinline migrate exits: run it as a Job, not a %s", cwhere, pw.obj.kind)
				}
			}
		}
	}
	checkK8sRefs(t, d, roles)
}

// checkK8sSecurity: non-root, read-only root, no privilege escalation, all
// capabilities dropped, requests and a memory limit.
func checkK8sSecurity(t *testing.T, where string, spec *corev1.PodSpec, c corev1.Container) {
	nonRoot := spec.SecurityContext != nil && spec.SecurityContext.RunAsNonRoot != nil && *spec.SecurityContext.RunAsNonRoot
	if c.SecurityContext != nil && c.SecurityContext.RunAsNonRoot != nil {
		nonRoot = *c.SecurityContext.RunAsNonRoot
	}
	if !nonRoot {
		t.Errorf("%s: runAsNonRoot is not true", where)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem is not true", where)
	}
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", where)
	}
	if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s: capabilities do not drop ALL", where)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("%s: resources.requests needs cpu and memory", where)
	}
	if c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: resources.limits needs memory", where)
	}
}

// portNumber resolves a probe's or Service's port against the container.
func portNumber(c corev1.Container, name string, number int32) (int32, bool) {
	if name == "" {
		return number, true
	}
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

func checkK8sServe(t *testing.T, where string, pw podWorkload, c corev1.Container, s settings) {
	spec := &pw.template.Spec
	_, listenPort, _ := net.SplitHostPort(s.get("listen"))
	probe := func(kind string, p *corev1.Probe, paths ...string) {
		if p == nil {
			t.Errorf("%s: no %s", where, kind)
			return
		}
		if p.HTTPGet == nil {
			t.Errorf("%s: %s is not an httpGet", where, kind)
			return
		}
		if !slices.Contains(paths, p.HTTPGet.Path) {
			t.Errorf("%s: %s on %q, want %s", where, kind, p.HTTPGet.Path, strings.Join(paths, " or "))
		}
		port, ok := portNumber(c, p.HTTPGet.Port.StrVal, p.HTTPGet.Port.IntVal)
		if !ok || strconv.Itoa(int(port)) != listenPort {
			t.Errorf("%s: %s on port %s, but --listen is %s", where, kind, p.HTTPGet.Port.String(), s.get("listen"))
		}
	}
	probe("readinessProbe", c.ReadinessProbe, "/readyz")
	probe("livenessProbe", c.LivenessProbe, "/healthz")
	if c.StartupProbe != nil {
		probe("startupProbe", c.StartupProbe, "/healthz", "/readyz")
	}

	// Termination: preStop, then SIGTERM and the drain, within the grace.
	grace := 30 * time.Second
	if spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	}
	var preStop time.Duration
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
		h := c.Lifecycle.PreStop
		switch {
		case h.Sleep != nil:
			preStop = time.Duration(h.Sleep.Seconds) * time.Second
		case h.Exec != nil:
			t.Errorf("%s: preStop exec %q: the image is distroless, there is no shell or sleep; use preStop.sleep", where, h.Exec.Command)
		}
	}
	if shutdown := s.duration(t, "shutdown-timeout"); grace <= preStop+shutdown {
		t.Errorf("%s: terminationGracePeriodSeconds %s must exceed preStop %s + --shutdown-timeout %s", where, grace, preStop, shutdown)
	}

	// Prometheus scrape annotations.
	ann := pw.template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != listenPort || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("%s: want annotations prometheus.io/scrape \"true\", /port %q, /path \"/metrics\"; got %v", where, listenPort, ann)
	}

	// The data directory: writable, and persistent where the role keeps
	// durable state (the embedded store; a processor's outage spool).
	dataDir := s.get("data-dir")
	var mount *corev1.VolumeMount
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == dataDir {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil {
		t.Errorf("%s: --data-dir %s is not a mounted volume (the root filesystem is read-only)", where, dataDir)
		return
	}
	persistent := slices.Contains(pw.claims, mount.Name)
	if i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == mount.Name }); i >= 0 {
		persistent = spec.Volumes[i].PersistentVolumeClaim != nil
		if persistent && pw.replicas > 1 {
			t.Errorf("%s: %d replicas share the PersistentVolumeClaim of %s: one volume per process (volumeClaimTemplates)", where, pw.replicas, dataDir)
		}
	} else if !persistent {
		t.Errorf("%s: volume %s of --data-dir is not defined", where, mount.Name)
	}
	role := s.get("role")
	if s.get("mqtt-broker") != "" && pw.obj.kind != "StatefulSet" {
		t.Errorf("%s: --mqtt-broker in a %s: its persistent session is keyed on the pod name (client id twinline-{hostname}), which must be stable: use a StatefulSet", where, pw.obj.kind)
	}
	if (role == "processor" || role == "all") && !persistent {
		t.Errorf("%s: role %s keeps durable state in --data-dir: use a StatefulSet volumeClaimTemplate, not a temporary volume", where, role)
	}
	if s.get("store") == "embedded" && role != "gateway" && pw.replicas > 1 {
		t.Errorf("%s: %d replicas with the embedded store: each would hold a part of the history", where, pw.replicas)
	}
}

// exposes reports whether a container of pw has the port.
func exposes(pw podWorkload, port intstr.IntOrString) bool {
	for _, c := range pw.template.Spec.Containers {
		for _, cp := range c.Ports {
			if (port.Type == intstr.String && cp.Name == port.StrVal) || (port.Type == intstr.Int && cp.ContainerPort == port.IntVal) {
				return true
			}
		}
	}
	return false
}

func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// checkK8sRefs checks that Services, PDBs, HPAs and Ingresses point at
// workloads and ports that exist, and that replicated workloads have a PDB.
func checkK8sRefs(t *testing.T, d *k8sDir, roles map[string]string) {
	workloads := d.workloads()
	selected := func(sel map[string]string) []podWorkload {
		var out []podWorkload
		for _, pw := range workloads {
			if pw.isService && labelsMatch(sel, pw.template.Labels) {
				out = append(out, pw)
			}
		}
		return out
	}
	services := map[string][]podWorkload{}
	servicePorts := map[string][]corev1.ServicePort{}
	for _, o := range d.objects {
		svc, ok := o.obj.(*corev1.Service)
		if !ok {
			continue
		}
		where := fmt.Sprintf("%s: Service %s", o.file, o.name)
		pods := selected(svc.Spec.Selector)
		if len(pods) == 0 {
			t.Errorf("%s: selector %v matches no workload", where, svc.Spec.Selector)
		}
		services[o.name], servicePorts[o.name] = pods, svc.Spec.Ports
		for _, p := range svc.Spec.Ports {
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port)
			}
			for _, pw := range pods {
				if !exposes(pw, target) {
					t.Errorf("%s: port %s targets %s, which %s %s does not expose", where, p.Name, target.String(), pw.obj.kind, pw.obj.name)
				}
			}
		}
	}
	for _, sts := range workloads {
		if s, ok := sts.obj.obj.(*appsv1.StatefulSet); ok {
			if _, ok := services[s.Spec.ServiceName]; !ok {
				t.Errorf("%s: StatefulSet %s: serviceName %q is not a Service here", sts.obj.file, s.Name, s.Spec.ServiceName)
			}
		}
	}

	covered := map[string]bool{}
	for _, o := range d.objects {
		pdb, ok := o.obj.(*policyv1.PodDisruptionBudget)
		if !ok {
			continue
		}
		if pdb.Spec.Selector == nil || len(pdb.Spec.Selector.MatchExpressions) > 0 {
			t.Errorf("%s: PodDisruptionBudget %s: use selector.matchLabels", o.file, o.name)
			continue
		}
		pods := selected(pdb.Spec.Selector.MatchLabels)
		if len(pods) == 0 {
			t.Errorf("%s: PodDisruptionBudget %s matches no workload", o.file, o.name)
		}
		for _, pw := range pods {
			covered[pw.obj.name] = true
		}
	}
	for _, pw := range workloads {
		if pw.isService && pw.replicas > 1 && !covered[pw.obj.name] {
			t.Errorf("%s: %s %s has %d replicas and no PodDisruptionBudget", pw.obj.file, pw.obj.kind, pw.obj.name, pw.replicas)
		}
	}

	for _, o := range d.objects {
		switch x := o.obj.(type) {
		case *autoscalingv2.HorizontalPodAutoscaler:
			ref := x.Spec.ScaleTargetRef
			if !slices.ContainsFunc(workloads, func(pw podWorkload) bool { return pw.obj.kind == ref.Kind && pw.obj.name == ref.Name }) {
				t.Errorf("%s: HPA %s targets %s %s, which is not here", o.file, o.name, ref.Kind, ref.Name)
			}
			if roles[ref.Name] == "processor" {
				t.Errorf("%s: HPA %s scales processors: their count is bounded by the Kafka partitions, each has its own volume", o.file, o.name)
			}
		case *networkingv1.Ingress:
			for _, rule := range x.Spec.Rules {
				if rule.HTTP == nil {
					continue
				}
				for _, p := range rule.HTTP.Paths {
					be := p.Backend.Service
					if be == nil {
						t.Errorf("%s: Ingress %s path %s has no service backend", o.file, o.name, p.Path)
						continue
					}
					pods, ok := services[be.Name]
					if !ok {
						t.Errorf("%s: Ingress %s path %s: Service %s is not here", o.file, o.name, p.Path, be.Name)
						continue
					}
					if !slices.ContainsFunc(servicePorts[be.Name], func(sp corev1.ServicePort) bool {
						return sp.Name == be.Port.Name && (be.Port.Name != "" || sp.Port == be.Port.Number)
					}) {
						t.Errorf("%s: Ingress %s path %s: Service %s has no port %v", o.file, o.name, p.Path, be.Name, be.Port)
					}
					ingest := slices.Contains([]string{"/api/v1/events", "/write", "/api/v2/write", "/ping", "/query"}, p.Path)
					for _, pw := range pods {
						role := roles[pw.obj.name]
						if role != "all" && (ingest != (role == "gateway")) {
							t.Errorf("%s: Ingress %s path %s goes to %s, whose role %s does not serve it", o.file, o.name, p.Path, be.Name, role)
						}
					}
				}
			}
		}
	}
}
