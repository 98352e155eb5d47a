// Tests of the deployment kit: the dashboard and alerts only use metrics that
// subgate exports, and the Kubernetes, compose, systemd and image files keep
// the properties the gateway relies on (shutdown grace, probes, non-root,
// file limits).
package deploy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/subgate/subgate/gateway"
)

// gatewayShutdownTimeout is the default gateway.shutdown_timeout; every stop
// grace period in the kit must exceed it.
const gatewayShutdownTimeout = 30 * time.Second

// knownMetrics are the metric families subgate exports, taken from the
// live registry of real components (gateway.MetricNames), so that a renamed
// or removed metric fails this test.
var knownMetrics = func() map[string]bool {
	names, err := gateway.MetricNames()
	if err != nil {
		panic("gateway.MetricNames: " + err.Error())
	}
	return setOf(names...)
}()

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// metricKnown reports whether name is an exported series name.
func metricKnown(name string) bool {
	if knownMetrics[name] {
		return true
	}
	// Histogram and summary series.
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok && knownMetrics[base] {
			return true
		}
	}
	return false
}

// promqlKeywords are identifiers of PromQL that are not metric names:
// operators, modifiers and the aggregation operators, which may be followed
// by a grouping ("sum by (x) (...)") rather than by "(".
var promqlKeywords = setOf("and", "or", "unless", "bool", "offset", "inf", "nan",
	"by", "without", "on", "ignoring", "group_left", "group_right", "atan2",
	"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
	"bottomk", "topk", "quantile", "limitk", "limit_ratio")

// promqlGrouping keywords are followed by a parenthesised label list.
var promqlGrouping = setOf("by", "without", "on", "ignoring", "group_left", "group_right")

// metricNames returns the metric names selected in a PromQL expression (with
// Grafana $variables). It is a tokenizer, not a parser: identifiers are
// metric names unless they are keywords, function names (followed by "("),
// label names (inside {...} or a grouping list), or parts of strings,
// durations and numbers.
func metricNames(expr string) ([]string, error) {
	var names []string
	s := expr
	i := 0
	skipString := func() error {
		q := s[i]
		i++
		for i < len(s) {
			switch {
			case s[i] == '\\' && q != '`':
				i += 2
			case s[i] == q:
				i++
				return nil
			default:
				i++
			}
		}
		return fmt.Errorf("unterminated string in %q", expr)
	}
	// skipUntil skips to just after the closing byte, minding strings.
	skipUntil := func(open, closing byte) error {
		depth := 0
		for i < len(s) {
			switch c := s[i]; {
			case c == '"' || c == '\'' || c == '`':
				if err := skipString(); err != nil {
					return err
				}
				continue
			case c == open:
				depth++
			case c == closing:
				depth--
				if depth == 0 {
					i++
					return nil
				}
			}
			i++
		}
		return fmt.Errorf("unbalanced %c%c in %q", open, closing, expr)
	}
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || (c|0x20 >= 'a' && c|0x20 <= 'z') }
	isIdent := func(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') }
	nextNonSpace := func(j int) byte {
		for ; j < len(s); j++ {
			if s[j] != ' ' && s[j] != '\t' && s[j] != '\n' && s[j] != '\r' {
				return s[j]
			}
		}
		return 0
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == '#': // comment to the end of the line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			if err := skipString(); err != nil {
				return nil, err
			}
		case c == '{':
			if err := skipUntil('{', '}'); err != nil {
				return nil, err
			}
		case c == '[':
			if err := skipUntil('[', ']'); err != nil {
				return nil, err
			}
		case c == '$': // Grafana variable: $name, ${name}, $__rate_interval
			i++
			if i < len(s) && s[i] == '{' {
				if err := skipUntil('{', '}'); err != nil {
					return nil, err
				}
				continue
			}
			for i < len(s) && isIdent(s[i]) {
				i++
			}
		case c >= '0' && c <= '9' || (c == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9'):
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(s) && isIdent(s[i]) {
				i++
			}
			word := s[start:i]
			next := nextNonSpace(i)
			switch {
			case promqlGrouping[word]:
				if next == '(' {
					for s[i] != '(' {
						i++
					}
					if err := skipUntil('(', ')'); err != nil {
						return nil, err
					}
				}
			case promqlKeywords[word], next == '(':
				// A keyword or a function name.
			default:
				names = append(names, word)
			}
		default:
			i++
		}
	}
	return names, nil
}

func TestMetricNamesTokenizer(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`sum by (instance, le) (rate(a_bucket{job="x",le!~"1|2"}[5m]))`, []string{"a_bucket"}},
		{`histogram_quantile(0.99, sum without(pod) (rate(b_seconds_bucket[$__rate_interval])))`, []string{"b_seconds_bucket"}},
		{`a / on(instance) group_left(version) b > bool 0.5 and c offset 1h`, []string{"a", "b", "c"}},
		{`max(x{instance=~"$instance"}) == 0 or vector(0)`, []string{"x"}},
		{`label_replace(m, "dst", "$1 {(", "src", "(.*)") # trailing comment with fake_metric`, []string{"m"}},
		{"sum(rate(y[5m]))\n  / 1e6\n  unless z", []string{"y", "z"}},
		{`count_values("version", ns:rule:sum) @ 1609746000 - -inf`, []string{"ns:rule:sum"}},
		{`absent(k{job="subgate"})`, []string{"k"}},
		{`max by (instance) (process_open_fds / process_max_fds) > 0.8`, []string{"process_open_fds", "process_max_fds"}},
		{`topk by (le) (3, q)`, []string{"q"}},
	} {
		got, err := metricNames(c.expr)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %q, %v; want %q", c.expr, got, err, c.want)
		}
	}
	for _, bad := range []string{`a{b="c}`, `rate(a[5m)`, `x{y="z"`} {
		if _, err := metricNames(bad); err == nil {
			t.Errorf("metricNames(%q): no error", bad)
		}
	}
}

type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID      int     `json:"id"`
	Type    string  `json:"type"`
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
}

// exprSource is one PromQL expression and where it was found.
type exprSource struct{ where, expr string }

func dashboardExprs(t *testing.T) []exprSource {
	t.Helper()
	data, err := os.ReadFile("grafana/subgate-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard lacks uid, title or panels")
	}
	var out []exprSource
	ids := map[int]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					t.Errorf("panel %q target %s has no expr", p.Title, tg.RefID)
				}
				out = append(out, exprSource{"dashboard panel " + strconv.Quote(p.Title), tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	// Template queries: label_values(metric, label).
	lv := regexp.MustCompile(`^label_values\(\s*([^,]+),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		m := lv.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, q.Query)
			continue
		}
		out = append(out, exprSource{"dashboard variable " + v.Name, m[1]})
	}
	return out
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t *testing.T) []rule {
	t.Helper()
	var rf ruleFile
	decodeYAMLFile(t, "prometheus/alerts.yml", &rf)
	var rules []rule
	for _, g := range rf.Groups {
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatal("alerts.yml has no rules")
	}
	return rules
}

func decodeYAMLFile(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestDeployKitMetricsExist(t *testing.T) {
	srcs := dashboardExprs(t)
	for _, r := range loadRules(t) {
		srcs = append(srcs, exprSource{"alert " + r.Alert, r.Expr})
	}
	used := map[string]bool{}
	for _, src := range srcs {
		names, err := metricNames(src.expr)
		if err != nil {
			t.Errorf("%s: %v", src.where, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s: expression selects no metric: %q", src.where, src.expr)
		}
		for _, n := range names {
			used[n] = true
			if !metricKnown(n) {
				t.Errorf("%s uses %s, which subgate does not export", src.where, n)
			}
		}
	}
	// The kit covers every component.
	for _, n := range []string{"subgate_northbound_connected", "subgate_southbound_sessions",
		"subgate_outbox_oldest_age_seconds", "subgate_outbox_dropped_total", "subgate_downlink_requests_total",
		"subgate_store_commit_seconds_bucket", "process_open_fds"} {
		if !used[n] {
			t.Errorf("neither the dashboard nor the alerts use %s", n)
		}
	}
}

func parseFor(t *testing.T, r rule) time.Duration {
	t.Helper()
	if r.For == "" {
		return 0
	}
	d, err := time.ParseDuration(r.For)
	if err != nil {
		t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
	}
	return d
}

func TestAlertRules(t *testing.T) {
	rules := loadRules(t)
	byName := map[string]rule{}
	for _, r := range rules {
		if r.Alert == "" || r.Record != "" {
			t.Errorf("rule %q: only alerting rules are expected", r.Expr)
			continue
		}
		if _, dup := byName[r.Alert]; dup {
			t.Errorf("alert %s defined twice", r.Alert)
		}
		byName[r.Alert] = r
		if sev := r.Labels["severity"]; sev != "critical" && sev != "warning" {
			t.Errorf("alert %s: severity %q", r.Alert, sev)
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("alert %s lacks summary or description", r.Alert)
		}
		parseFor(t, r)
	}
	want := map[string]struct {
		metric string
		minFor time.Duration
	}{
		"SubgateNorthboundDown":           {"subgate_northbound_connected", 2 * time.Minute},
		"SubgateOutboxStale":              {"subgate_outbox_oldest_age_seconds", 0},
		"SubgateOutboxGrowing":            {"subgate_outbox_bytes", 0},
		"SubgateOutboxDropping":           {"subgate_outbox_dropped_total", 0},
		"SubgateSouthboundRejectsSpiking": {"subgate_southbound_rejects_total", 0},
		"SubgateDownlinkFailures":         {"subgate_downlink_requests_total", 0},
	}
	for name, w := range want {
		r, ok := byName[name]
		if !ok {
			t.Errorf("missing alert %s", name)
			continue
		}
		if !strings.Contains(r.Expr, w.metric) {
			t.Errorf("alert %s does not use %s", name, w.metric)
		}
		if d := parseFor(t, r); d < w.minFor {
			t.Errorf("alert %s: for %v, want >= %v", name, d, w.minFor)
		}
	}
	if !strings.Contains(byName["SubgateOutboxStale"].Expr, "> 300") {
		t.Errorf("SubgateOutboxStale must fire past 5 minutes: %s", byName["SubgateOutboxStale"].Expr)
	}
}

// k8sObject is the part of a Kubernetes object the tests read; the rest is
// kept as a generic tree.
type k8sObject struct {
	APIVersion string         `yaml:"apiVersion"`
	Kind       string         `yaml:"kind"`
	Metadata   map[string]any `yaml:"metadata"`
	Spec       map[string]any `yaml:"spec"`
	Data       map[string]any `yaml:"data"`
}

func loadK8s(t *testing.T) map[string]k8sObject {
	t.Helper()
	files, err := filepath.Glob("k8s/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in k8s/: %v", err)
	}
	objs := map[string]k8sObject{}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var o k8sObject
			if err := dec.Decode(&o); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("%s: %v", f, err)
			}
			name, _ := o.Metadata["name"].(string)
			if o.Kind == "" || o.APIVersion == "" || name == "" {
				t.Fatalf("%s: object without kind, apiVersion or name", f)
			}
			key := o.Kind + "/" + name
			if _, dup := objs[key]; dup {
				t.Fatalf("%s: %s defined twice", f, key)
			}
			objs[key] = o
		}
	}
	return objs
}

// dig walks a generic YAML tree by map keys and list indexes.
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func TestKubernetesManifests(t *testing.T) {
	objs := loadK8s(t)
	sts, ok := objs["StatefulSet/subgate"]
	if !ok {
		t.Fatalf("no StatefulSet/subgate; have %v", keys(objs))
	}
	pod := dig(sts.Spec, "template", "spec")
	grace, _ := dig(pod, "terminationGracePeriodSeconds").(int)
	if time.Duration(grace)*time.Second <= gatewayShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %d must exceed the gateway's shutdown timeout %v", grace, gatewayShutdownTimeout)
	}
	if dig(pod, "securityContext", "runAsNonRoot") != true {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	c := dig(pod, "containers", 0)
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"} {
		if got := dig(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %v, want %s", probe, got, path)
		}
		if got := dig(c, probe, "httpGet", "port"); got != "admin" {
			t.Errorf("%s port %v, want the admin port", probe, got)
		}
	}
	if dig(c, "securityContext", "readOnlyRootFilesystem") != true || dig(c, "securityContext", "allowPrivilegeEscalation") != false {
		t.Error("container securityContext: want readOnlyRootFilesystem true and allowPrivilegeEscalation false")
	}
	if drop, _ := dig(c, "securityContext", "capabilities", "drop").([]any); !slices.Contains(drop, any("ALL")) {
		t.Errorf("capabilities.drop %v lacks ALL", drop)
	}
	ports := map[string]int{}
	for _, p := range dig(c, "ports").([]any) {
		ports[dig(p, "name").(string)], _ = dig(p, "containerPort").(int)
	}
	if ports["devices"] != 8081 || ports["admin"] != 9100 {
		t.Errorf("container ports %v, want devices 8081 and admin 9100", ports)
	}
	if dig(c, "resources", "limits", "memory") == nil || dig(c, "resources", "requests", "cpu") == nil {
		t.Error("container resources lack a memory limit or a cpu request")
	}
	// The store lives on the claim template's volume.
	claim, _ := dig(sts.Spec, "volumeClaimTemplates", 0, "metadata", "name").(string)
	if claim == "" {
		t.Fatal("no volumeClaimTemplates")
	}
	var storeMounted bool
	for _, m := range dig(c, "volumeMounts").([]any) {
		if dig(m, "name") == claim && dig(m, "mountPath") == "/var/lib/subgate" {
			storeMounted = true
		}
	}
	if !storeMounted {
		t.Errorf("volume claim %q is not mounted at /var/lib/subgate", claim)
	}
	// Services: the governing headless one and one for devices.
	headless, ok := objs["Service/"+fmt.Sprint(dig(sts.Spec, "serviceName"))]
	if !ok || dig(headless.Spec, "clusterIP") != "None" {
		t.Errorf("serviceName %v is not a headless Service", dig(sts.Spec, "serviceName"))
	}
	var devicePort bool
	for _, o := range objs {
		if o.Kind != "Service" || dig(o.Spec, "clusterIP") == "None" {
			continue
		}
		for _, p := range dig(o.Spec, "ports").([]any) {
			if dig(p, "targetPort") == "devices" {
				devicePort = true
			}
		}
	}
	if !devicePort {
		t.Error("no Service exposes the devices port")
	}
	for _, k := range []string{"PodDisruptionBudget/subgate", "ServiceMonitor/subgate", "ConfigMap/subgate-config"} {
		if _, ok := objs[k]; !ok {
			t.Errorf("missing %s", k)
		}
	}
	if got := dig(objs["ServiceMonitor/subgate"].Spec, "endpoints", 0, "path"); got != "/metrics" {
		t.Errorf("ServiceMonitor path %v", got)
	}
	if dig(objs["ServiceMonitor/subgate"].Spec, "endpoints", 0, "authorization", "credentials", "key") == nil {
		t.Error("ServiceMonitor scrapes without the admin token")
	}

	// The ConfigMap carries deploy/subgate.yaml.
	embedded, _ := objs["ConfigMap/subgate-config"].Data["subgate.yaml"].(string)
	file, err := os.ReadFile("subgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if embedded != string(file) {
		t.Error("k8s/configmap.yaml subgate.yaml differs from deploy/subgate.yaml: copy it over")
	}

	// Every manifest is in the kustomization.
	var kz struct {
		Resources []string `yaml:"resources"`
	}
	data, err := os.ReadFile("k8s/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &kz); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("k8s/*.yaml")
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !slices.Contains(kz.Resources, b) {
			t.Errorf("k8s/kustomization.yaml does not list %s", b)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// exampleConfigKeys are the keys deploy/subgate.yaml may use (agreed with
// the gateway's config loader, which tests that the file loads).
var exampleConfigKeys = setOf(
	"northbound.server", "northbound.device_id", "northbound.secret", "northbound.ca_file",
	"northbound.check_timestamp", "southbound.listen", "southbound.codec", "southbound.auth",
	"subdevice.default_product_id", "admin.listen", "admin.token_file", "store.dir",
	"log.level", "log.format",
)

func TestExampleConfig(t *testing.T) {
	var cfg map[string]map[string]any
	decodeYAMLFile(t, "subgate.yaml", &cfg)
	for sec, kv := range cfg {
		for k := range kv {
			if !exampleConfigKeys[sec+"."+k] {
				t.Errorf("subgate.yaml uses %s.%s, which is not an agreed key", sec, k)
			}
		}
	}
	if _, ok := cfg["northbound"]["secret"]; ok {
		t.Error("subgate.yaml holds the northbound secret; it must come from SUBGATE_NORTHBOUND_SECRET")
	}
	if s, _ := cfg["northbound"]["server"].(string); !strings.HasPrefix(s, "ssl://") || !strings.HasSuffix(s, ":8883") {
		t.Errorf("northbound.server %q is not TLS on 8883", s)
	}
	if cfg["admin"]["listen"] != "0.0.0.0:9100" || cfg["admin"]["token_file"] == nil {
		t.Error("admin must listen on 0.0.0.0:9100 with a token_file")
	}
	if cfg["store"]["dir"] != "/var/lib/subgate" {
		t.Errorf("store.dir %v is not the image's volume", cfg["store"]["dir"])
	}
}

func TestComposeAndPrometheus(t *testing.T) {
	var compose struct {
		Services map[string]map[string]any `yaml:"services"`
		Secrets  map[string]any            `yaml:"secrets"`
	}
	data, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, s := range []string{"subgate", "iotdasim", "prometheus", "grafana"} {
		if compose.Services[s] == nil {
			t.Errorf("compose.yaml lacks service %s", s)
		}
	}
	sg := compose.Services["subgate"]
	grace, err := time.ParseDuration(fmt.Sprint(sg["stop_grace_period"]))
	if err != nil || grace <= gatewayShutdownTimeout {
		t.Errorf("subgate stop_grace_period %v must exceed %v", sg["stop_grace_period"], gatewayShutdownTimeout)
	}
	if n, _ := dig(sg, "ulimits", "nofile", "soft").(int); n < 100000 {
		t.Errorf("subgate nofile soft limit %d is below the default connection bound", n)
	}
	if dig(sg, "build", "dockerfile") != "deploy/Dockerfile" {
		t.Error("subgate is not built from deploy/Dockerfile")
	}

	var prom struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			MetricsPath   string `yaml:"metrics_path"`
			Authorization struct {
				Type            string `yaml:"type"`
				CredentialsFile string `yaml:"credentials_file"`
			} `yaml:"authorization"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
		Global map[string]any `yaml:"global"`
	}
	decodeYAMLFile(t, "prometheus/prometheus.yml", &prom)
	if !slices.Contains(prom.RuleFiles, "/etc/prometheus/alerts.yml") {
		t.Errorf("prometheus.yml does not load alerts.yml: %v", prom.RuleFiles)
	}
	if len(prom.ScrapeConfigs) != 1 || prom.ScrapeConfigs[0].JobName != "subgate" {
		t.Fatalf("want one scrape job named subgate (alerts.yml matches job=\"subgate\")")
	}
	sc := prom.ScrapeConfigs[0]
	if sc.Authorization.Type != "Bearer" || sc.Authorization.CredentialsFile == "" {
		t.Error("the subgate scrape sends no bearer token")
	}
	if len(sc.StaticConfigs) == 0 || !slices.Contains(sc.StaticConfigs[0].Targets, "subgate:9100") {
		t.Error("the subgate scrape does not target subgate:9100")
	}
	// The token file is mounted into the Prometheus container.
	var mounted bool
	for _, s := range dig(compose.Services["prometheus"], "secrets").([]any) {
		if dig(s, "target") == sc.Authorization.CredentialsFile {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("%s is not mounted into the prometheus service", sc.Authorization.CredentialsFile)
	}
}

func TestImageAndBuildScript(t *testing.T) {
	df, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build",
		"sh deploy/build.sh /out/subgate",
		"FROM gcr.io/distroless/static-debian12:nonroot",
		"USER 65532:65532",
		"VOLUME /var/lib/subgate",
		"EXPOSE 8081 9100",
		`CMD ["/subgate", "-healthcheck", "http://127.0.0.1:9100/healthz"]`,
		`ENTRYPOINT ["/subgate", "-config", "/etc/subgate/subgate.yaml"]`,
	} {
		if !bytes.Contains(df, []byte(want)) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if bytes.Contains(df, []byte("go build")) {
		t.Error("Dockerfile runs go build itself; it must use deploy/build.sh")
	}
	sim, err := os.ReadFile("Dockerfile.iotdasim")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(sim, []byte("PKG=./cmd/iotdasim")) || !bytes.Contains(sim, []byte("sh deploy/build.sh")) {
		t.Error("Dockerfile.iotdasim does not build ./cmd/iotdasim with deploy/build.sh")
	}
	bs, err := os.ReadFile("build.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w -X main.version=${VERSION}"`} {
		if !bytes.Contains(bs, []byte(want)) {
			t.Errorf("build.sh lacks %q", want)
		}
	}
}

func TestSystemdUnit(t *testing.T) {
	data, err := os.ReadFile("systemd/subgate.service")
	if err != nil {
		t.Fatal(err)
	}
	directives := map[string][]string{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("not a directive: %q", line)
			continue
		}
		directives[k] = append(directives[k], v)
	}
	one := func(k string) string {
		if len(directives[k]) == 0 {
			t.Errorf("missing %s", k)
			return ""
		}
		return directives[k][len(directives[k])-1]
	}
	stop, err := time.ParseDuration(one("TimeoutStopSec") + "s")
	if err != nil || stop <= gatewayShutdownTimeout {
		t.Errorf("TimeoutStopSec %q must exceed %v", one("TimeoutStopSec"), gatewayShutdownTimeout)
	}
	if n, _ := strconv.Atoi(one("LimitNOFILE")); n < 200000 {
		t.Errorf("LimitNOFILE %d is too low for the connection bound", n)
	}
	for k, v := range map[string]string{"DynamicUser": "yes", "StateDirectory": "subgate", "ProtectSystem": "strict",
		"NoNewPrivileges": "yes", "ProtectHome": "yes", "PrivateTmp": "yes"} {
		if got := one(k); got != v {
			t.Errorf("%s=%s, want %s", k, got, v)
		}
	}
	if !strings.Contains(one("ExecStart"), "-config /etc/subgate/subgate.yaml") {
		t.Errorf("ExecStart %q", one("ExecStart"))
	}
}
