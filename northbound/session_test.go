package northbound

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/northbound/iotdasim"
	"github.com/subgate/subgate/southbound/southboundtest"
)

const (
	gwID   = "nb-test-gw"
	secret = "nb-test-secret"
)

func startSim(t *testing.T, mod func(*iotdasim.Config)) *iotdasim.Sim {
	t.Helper()
	cfg := iotdasim.DevConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Devices = map[string]string{gwID: secret}
	if mod != nil {
		mod(&cfg)
	}
	s, err := iotdasim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// run starts Run and stops it at the end of the test.
func run(t *testing.T, s *Session) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return")
		}
	})
}

func waitUp(t *testing.T, up <-chan struct{}) {
	t.Helper()
	select {
	case <-up:
	case <-time.After(10 * time.Second):
		t.Fatal("session did not come up")
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{Server: "tcp://127.0.0.1:1883", DeviceID: "g", Secret: "s"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"scheme":     {Server: "http://x:1", DeviceID: "g", Secret: "s"},
		"no port":    {Server: "tcp://x", DeviceID: "g", Secret: "s"},
		"no id":      {Server: "tcp://x:1", Secret: "s"},
		"no secret":  {Server: "tcp://x:1", DeviceID: "g"},
		"keepalive":  {Server: "tcp://x:1", DeviceID: "g", Secret: "s", KeepAlive: 10 * time.Second},
		"sign type":  {Server: "tcp://x:1", DeviceID: "g", Secret: "s", CheckTimestamp: 2},
		"x509 plain": {Server: "tcp://x:1", DeviceID: "g", CertFile: "c", KeyFile: "k"},
		"half pair":  {Server: "ssl://x:1", DeviceID: "g", CertFile: "c"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	s := &Session{cfg: Config{MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}}
	for n := range 40 {
		d := s.backoff(n)
		if d < 80*time.Millisecond || d > time.Second {
			t.Fatalf("backoff(%d) = %s outside [min*0.8, max]", n, d)
		}
	}
	if s.backoff(0) > 100*time.Millisecond || s.backoff(20) < 800*time.Millisecond {
		t.Fatal("backoff does not grow from min to max")
	}
}

// TestPublishAndDownlink: connect with secret auth (both sign types),
// publish with a PUBACK, receive a downlink on an explicit QoS 1
// subscription.
func TestPublishAndDownlink(t *testing.T) {
	for _, sign := range []int{0, 1} {
		sim := startSim(t, func(c *iotdasim.Config) { c.CheckTimestamp = true })
		up := make(chan struct{}, 1)
		s, err := New(Config{Server: "tcp://" + sim.Addr(), DeviceID: gwID, Secret: secret, CheckTimestamp: sign,
			Subscriptions: iotda.Subscriptions(gwID), OnUp: func() { up <- struct{}{} }}, nil, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		run(t, s)
		waitUp(t, up)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		payload, _ := iotda.NewEvents("", iotda.ServiceSubDeviceManager, iotda.EventSyncRequest, "e1", time.Now(), iotda.SyncParas{})
		if err := s.Publish(ctx, "sync", iotda.TopicEventsUp(gwID), payload); err != nil {
			t.Fatalf("sign %d: publish: %v", sign, err)
		}
		if err := sim.SendMessage(gwID, "", []byte(`"to the gateway"`)); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-s.Messages():
			if !strings.HasSuffix(m.Topic, "/sys/messages/down") {
				t.Fatalf("downlink topic %s", m.Topic)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no downlink")
		}
	}
}

// TestBadCredentials: CONNACK 4 is reported, surfaced in State, and the
// retry waits the maximum backoff instead of hammering the platform.
func TestBadCredentials(t *testing.T) {
	sim := startSim(t, nil)
	var attempts atomic.Int32
	reg := prometheus.NewRegistry()
	s, err := New(Config{Server: "tcp://" + sim.Addr(), DeviceID: gwID, Secret: "wrong",
		MinBackoff: 10 * time.Millisecond, MaxBackoff: time.Hour,
		Now: func() time.Time { attempts.Add(1); return time.Now() }}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, s)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, lastErr := s.State()
		if errors.Is(lastErr, ErrBadCredentials) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state error = %v", lastErr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s.Connected() {
		t.Fatal("connected with a wrong secret")
	}
	mfs, _ := reg.Gather()
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "subgate_northbound_connects_total" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "bad_credentials" && m.GetCounter().GetValue() >= 1 {
					found = true
				}
			}
		}
	}
	if !found {
		t.Fatal("bad_credentials not counted")
	}
}

// TestTLSVerifiesServer: with the right CA the session connects over TLS;
// with the system roots (which do not know the test CA) it refuses the
// server; the insecure switch connects anyway. X.509 client login works
// without a password (iotda-protocol §1.3).
func TestTLSVerifiesServer(t *testing.T) {
	dir := t.TempDir()
	ca := southboundtest.NewCA(t, "nb-test-ca")
	caFile := ca.WriteCA(t, dir, "ca.pem")
	srvCert, srvKey := ca.WriteFiles(t, dir, "server", "localhost", true)
	cliCert, cliKey := ca.WriteFiles(t, dir, "client", gwID, false)
	sim := startSim(t, func(c *iotdasim.Config) {
		c.TLSListen = "127.0.0.1:0"
		c.TLSCert = srvCert
		c.TLSKey = srvKey
		c.ClientCAFile = caFile
	})
	_, port, _ := net.SplitHostPort(sim.TLSAddr())
	server := "ssl://localhost:" + port

	try := func(cfg Config) error {
		up := make(chan struct{}, 1)
		cfg.Server, cfg.DeviceID, cfg.OnUp = server, gwID, func() { up <- struct{}{} }
		cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
		s, err := New(cfg, nil, nil)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.Run(ctx); close(done) }()
		defer func() { cancel(); <-done }()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case <-up:
				return nil
			case <-deadline:
				return errors.New("timeout")
			case <-time.After(20 * time.Millisecond):
				if _, _, err := s.State(); err != nil {
					return err
				}
			}
		}
	}
	if err := try(Config{Secret: secret, CAFile: caFile}); err != nil {
		t.Fatalf("TLS with the right CA: %v", err)
	}
	if err := try(Config{Secret: secret}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("TLS with system roots should fail verification, got %v", err)
	}
	if err := try(Config{Secret: secret, InsecureSkipVerify: true}); err != nil {
		t.Fatalf("insecure switch: %v", err)
	}
	if err := try(Config{CAFile: caFile, CertFile: cliCert, KeyFile: cliKey}); err != nil {
		t.Fatalf("X.509 login: %v", err)
	}
}
