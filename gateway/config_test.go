package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "subgate.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const minimalYAML = `
northbound:
  server: ssl://iot.example.com:8883
  device_id: gw_1
  secret: s3cr3t-value-xyz
`

func TestLoadConfigDefaultsAndFile(t *testing.T) {
	cfg, err := LoadConfig(writeFile(t, minimalYAML+`
southbound:
  codec: binary
  allow_list: [a, b]
subdevice:
  status_debounce: 250ms
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Southbound.Listen != ":8081" || cfg.Admin.Listen != "127.0.0.1:9100" || cfg.Store.Dir != "./data" {
		t.Fatalf("defaults lost: %+v", cfg)
	}
	if cfg.Southbound.Codec != "binary" || len(cfg.Southbound.AllowList) != 2 || cfg.Subdevice.StatusDebounce != 250*time.Millisecond {
		t.Fatalf("file values not applied: %+v", cfg.Southbound)
	}
}

func TestLoadConfigEnvOverrides(t *testing.T) {
	cfg, err := LoadConfig(writeFile(t, minimalYAML), []string{
		"SUBGATE_NORTHBOUND_SERVER=tcp://127.0.0.1:1883",
		"SUBGATE_NORTHBOUND_CHECK_TIMESTAMP=1",
		"SUBGATE_SOUTHBOUND_ALLOW_LIST=x, y ,z",
		"SUBGATE_LOG_FORMAT=json",
		"PATH=/usr/bin",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Northbound.Server != "tcp://127.0.0.1:1883" || cfg.Northbound.CheckTimestamp != 1 ||
		strings.Join(cfg.Southbound.AllowList, ",") != "x,y,z" || cfg.Log.Format != "json" {
		t.Fatalf("env not applied: %+v", cfg)
	}
}

func TestLoadConfigErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name, yaml string
		env        []string
		want       string
	}{
		{"unknown key", minimalYAML + "southbound:\n  lisen: :1\n", nil, "southbound.lisen: unknown key"},
		{"unknown section", minimalYAML + "south:\n  listen: :1\n", nil, `unknown section "south"`},
		{"bad duration", minimalYAML + "southbound:\n  idle_timeout: soon\n", nil, "southbound.idle_timeout"},
		{"bad int", minimalYAML + "southbound:\n  max_conns: many\n", nil, "southbound.max_conns"},
		{"bad codec", minimalYAML + "southbound:\n  codec: xml\n", nil, "southbound.codec"},
		{"bad scheme", minimalYAML + "northbound:\n  server: http://x:1\n", nil, "northbound.server"},
		{"keepalive range", minimalYAML + "northbound:\n  keepalive: 10s\n", nil, "northbound.keepalive"},
		{"check_timestamp", minimalYAML, []string{"SUBGATE_NORTHBOUND_CHECK_TIMESTAMP=2"}, "northbound.check_timestamp"},
		{"unknown env", minimalYAML, []string{"SUBGATE_SOUTHBOUND_LISTN=:1"}, "SUBGATE_SOUTHBOUND_LISTN"},
		{"bad env bool", minimalYAML, []string{"SUBGATE_ADMIN_PPROF=maybe"}, "SUBGATE_ADMIN_PPROF"},
		{"token with demo", minimalYAML + "southbound:\n  codec: demo\n  auth: token\n", nil, "southbound.auth"},
		{"missing secret", "northbound:\n  server: tcp://a:1\n  device_id: g\n", nil, "northbound.secret"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Duplicate top-level sections are merged key by key.
			_, err := LoadConfig(writeFile(t, tc.yaml), tc.env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestRedactedHidesSecrets(t *testing.T) {
	cfg, err := LoadConfig(writeFile(t, minimalYAML), nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "s3cr3t-value-xyz") || !strings.Contains(string(out), redacted) {
		t.Fatalf("redacted config:\n%s", out)
	}
	if !strings.Contains(string(out), "idle_timeout: 5m0s") {
		t.Fatalf("durations should print as Go durations:\n%s", out)
	}
	if s := cfg.Northbound.Secret.String(); s != redacted {
		t.Fatalf("String() = %q", s)
	}
}

func TestSecretFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(p, []byte("from-file-secret\n"), 0o600)
	cfg, err := LoadConfig("", []string{
		"SUBGATE_NORTHBOUND_SERVER=tcp://127.0.0.1:1883",
		"SUBGATE_NORTHBOUND_DEVICE_ID=g1",
		"SUBGATE_NORTHBOUND_SECRET_FILE=" + p,
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Northbound.Secret.Reveal() != "from-file-secret" {
		t.Fatalf("secret = %q", cfg.Northbound.Secret.Reveal())
	}
}

// TestDeployConfigsLoad: the example configs shipped in deploy/ load and
// validate (issue 7).
func TestDeployConfigsLoad(t *testing.T) {
	matches, _ := filepath.Glob("../deploy/*.yaml")
	k8s, _ := filepath.Glob("../deploy/config/*.yaml")
	matches = append(matches, k8s...)
	n := 0
	for _, p := range matches {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "northbound:") {
			continue // compose or other YAML
		}
		n++
		_, err = LoadConfig(p, []string{"SUBGATE_NORTHBOUND_SECRET=from-env-in-deploy"})
		if err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if n == 0 {
		t.Fatal("no example gateway config found in deploy/")
	}
}
