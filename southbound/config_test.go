package southbound

import (
	"errors"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Listen: ":8081", Codec: "jsonl"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tc := range []struct {
		name string
		edit func(*Config)
		key  string
	}{
		{"no listener", func(c *Config) { c.Listen = "" }, "southbound.listen"},
		{"bad listen", func(c *Config) { c.Listen = "8081" }, "southbound.listen"},
		{"bad scheme", func(c *Config) { c.Listen = "udp://:8081" }, "southbound.listen"},
		{"bad codec", func(c *Config) { c.Codec = "xml" }, "southbound.codec"},
		{"bad auth", func(c *Config) { c.Auth = "password" }, "southbound.auth"},
		{"token with demo", func(c *Config) { c.Codec, c.Auth = "demo", AuthToken }, "southbound.auth"},
		{"mtls without tls", func(c *Config) { c.Auth = AuthMTLS }, "southbound.tls_listen"},
		{"mtls with plain", func(c *Config) {
			c.Auth, c.TLSListen, c.TLSCertFile, c.TLSKeyFile, c.ClientCAFile = AuthMTLS, ":8443", missing, missing, missing
		}, "southbound.listen"},
		{"tls without cert", func(c *Config) { c.TLSListen = ":8443" }, "southbound.tls_cert_file"},
		{"tls with missing files", func(c *Config) {
			c.TLSListen, c.TLSCertFile, c.TLSKeyFile, c.ClientCAFile = ":8443", missing, missing, missing
		}, "southbound.tls_cert_file"},
		{"tls with demo", func(c *Config) { c.Codec, c.TLSListen = "demo", ":8443" }, "southbound.tls_listen"},
		{"tls listen scheme", func(c *Config) {
			c.TLSListen, c.TLSCertFile, c.TLSKeyFile, c.ClientCAFile = "tcp://:8443", missing, missing, missing
		}, "southbound.tls_listen"},
		{"empty allow entry", func(c *Config) { c.AllowList = []string{"a", ""} }, "southbound.allow_list"},
		{"negative loops", func(c *Config) { c.Loops = -1 }, "southbound.loops"},
		{"negative workers", func(c *Config) { c.Workers = -2 }, "southbound.workers"},
		{"huge queue", func(c *Config) { c.WorkerQueue = 1 << 30 }, "southbound.worker_queue"},
		{"negative max conns", func(c *Config) { c.MaxConns = -1 }, "southbound.max_conns"},
		{"negative per ip", func(c *Config) { c.MaxConnsPerIP = -1 }, "southbound.max_conns_per_ip"},
		{"tiny frame", func(c *Config) { c.MaxFrame = 10 }, "southbound.max_frame"},
		{"huge frame", func(c *Config) { c.MaxFrame = 1 << 30 }, "southbound.max_frame"},
		{"negative hello timeout", func(c *Config) { c.HelloTimeout = -time.Second }, "southbound.hello_timeout"},
		{"negative idle timeout", func(c *Config) { c.IdleTimeout = -time.Second }, "southbound.idle_timeout"},
		{"negative rate", func(c *Config) { c.RatePerSec = -1 }, "southbound.rate_per_sec"},
		{"negative burst", func(c *Config) { c.RateBurst = -1 }, "southbound.rate_burst"},
		{"huge burst", func(c *Config) { c.RateBurst = maxRateBurst + 1 }, "southbound.rate_burst"},
		{"outbound below frame", func(c *Config) { c.MaxOutbound = 100 }, "southbound.max_outbound"},
		{"bad second login", func(c *Config) { c.SecondLogin = "both" }, "southbound.second_login"},
		{"bad frames overflow", func(c *Config) { c.MaxBadFrames = 1 << 20 }, "southbound.max_bad_frames"},
		{"rate strikes overflow", func(c *Config) { c.RateStrikes = 1 << 20 }, "southbound.rate_strikes"},
		{"negative write timeout", func(c *Config) { c.WriteTimeout = -1 }, "southbound.write_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate accepted the config")
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.key+":") {
				t.Fatalf("error %q does not name %s", err, tc.key)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	var c Config
	c.SetDefaults()
	procs := runtime.GOMAXPROCS(0)
	if c.Workers != 4*procs || c.WorkerQueue != 4096 || c.MaxConns != 100000 || c.MaxFrame != 64<<10 ||
		c.HelloTimeout != 10*time.Second || c.IdleTimeout != 300*time.Second || c.MaxOutbound != 256<<10 ||
		c.SecondLogin != KickOld || c.MaxBadFrames != 5 || c.Auth != AuthOpen || c.MaxConnsPerIP != 0 {
		t.Fatalf("defaults: %+v", c)
	}
	r := Config{RatePerSec: 2.5}
	r.SetDefaults()
	if r.RateBurst != 2 {
		t.Fatalf("rate burst default %d, want 2", r.RateBurst)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(Config{Listen: ":0"}, nil, nil, nil, nil); !errors.Is(err, ErrNilHandler) {
		t.Fatalf("nil handler: %v", err)
	}
	if _, err := New(Config{Listen: ":0", Auth: AuthToken}, newFakeHandler(), nil, nil, nil); !errors.Is(err, ErrNoSecrets) {
		t.Fatalf("token without secrets: %v", err)
	}
	if _, err := New(Config{Listen: ":0", Codec: "nope"}, newFakeHandler(), nil, nil, nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("bad codec: %v", err)
	}
}
