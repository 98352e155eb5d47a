package iotdasim

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

type otaClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *otaClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *otaClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newOTATest(t *testing.T, sim *Sim) (*OTAServer, *http.Client, *otaClock) {
	t.Helper()
	clk := &otaClock{t: time.Now()}
	srv, err := NewOTAServer(sim, OTAServerConfig{TokenTTL: time.Minute, Clock: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(srv.CAPEM()) {
		t.Fatal("CA PEM")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	return srv, &http.Client{Transport: tr, Timeout: waitTime}, clk
}

func get(t *testing.T, c *http.Client, url, token, rng string) (int, []byte, error) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, b, err
}

// TestOTAServerTokensAndRanges: the package is served over HTTPS signed by
// the test CA, only with a valid, unexpired token; ranges resume a
// download; a cut response forces a resume; everything is counted.
func TestOTAServerTokensAndRanges(t *testing.T) {
	srv, c, clk := newOTATest(t, nil)
	data := []byte(strings.Repeat("0123456789", 100))
	url, tok, err := srv.Publish(OTAPackage{Name: "p.bin", Version: "v2", Data: data, CutAfter: 300})
	if err != nil || tok == "" || url != srv.URL("p.bin") {
		t.Fatalf("Publish: %q %q %v", url, tok, err)
	}
	if code, _, _ := get(t, c, url, "", ""); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	if code, _, _ := get(t, c, url, "wrong", ""); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	// The first whole-file GET is cut after 300 bytes.
	code, body, err := get(t, c, url, tok, "")
	if code != http.StatusOK || err == nil || len(body) != 300 {
		t.Fatalf("cut GET: %d, %d bytes, %v", code, len(body), err)
	}
	code, body, err = get(t, c, url, tok, "bytes=300-")
	if code != http.StatusPartialContent || err != nil || string(body) != string(data[300:]) {
		t.Fatalf("range GET: %d, %d bytes, %v", code, len(body), err)
	}
	code, body, _ = get(t, c, url, tok, "")
	if code != http.StatusOK || string(body) != string(data) {
		t.Fatalf("second whole GET: %d %d", code, len(body))
	}
	if code, _, _ := get(t, c, srv.URL("nope.bin"), tok, ""); code != http.StatusNotFound {
		t.Fatalf("unknown package: %d", code)
	}
	clk.add(2 * time.Minute)
	if code, _, _ := get(t, c, url, tok, ""); code != http.StatusUnauthorized {
		t.Fatalf("expired token: %d", code)
	}
	_, tok2, _ := srv.Publish(OTAPackage{Name: "p.bin", Version: "v2", Data: data})
	if code, _, _ := get(t, c, url, tok2, ""); code != http.StatusOK {
		t.Fatalf("fresh token: %d", code)
	}
	srv.ExpireTokens()
	if code, _, _ := get(t, c, url, tok2, ""); code != http.StatusUnauthorized {
		t.Fatalf("after ExpireTokens: %d", code)
	}
	st := srv.Stats("p.bin")
	if st.Requests != 4 || st.RangeRequests != 1 || st.Cut != 1 || st.Unauthorized != 4 ||
		st.BytesServed != int64(300+700+1000+1000) {
		t.Fatalf("stats %+v", st)
	}
	// A v2 (OBS) package needs no token.
	url2, tok3, _ := srv.Publish(OTAPackage{Name: "obs.bin", Version: "v3", Data: data, V2: true})
	if code, body, _ := get(t, c, url2, "", ""); tok3 != "" || code != http.StatusOK || len(body) != len(data) {
		t.Fatalf("v2: %q %d", tok3, code)
	}
	for _, p := range []OTAPackage{{Name: "", Data: data}, {Name: "a/b", Data: data}, {Name: "e.bin"}} {
		if _, _, err := srv.Publish(p); !errors.Is(err, ErrOTA) {
			t.Errorf("Publish(%q, %d bytes): %v", p.Name, len(p.Data), err)
		}
	}
}

// TestStartOTA: the upgrade events reach the gateway with the sub-device
// in object_device_id and the documented paras (iotda-protocol §4.2,
// §4.6); progress and version reports are readable from the View.
func TestStartOTA(t *testing.T) {
	s := newSim(t, nil)
	if _, err := s.AddDevice(gw1, iotda.DeviceInfo{NodeID: "n1", ProductID: "p"}); err != nil {
		t.Fatal(err)
	}
	d := connectDevice(t, s, gw1, secret1)
	srv, _, _ := newOTATest(t, s)
	data := []byte("firmware image")
	sum := sha256.Sum256(data)
	task, err := srv.StartOTA(gw1, []string{"p_n1"}, OTAPackage{Name: "fw.bin", Version: "v2", Data: data, TaskID: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	evs, ev := d.recvEvent()
	var p iotda.UpgradeParas
	decodeParas(t, ev, &p)
	if evs.ObjectDeviceID != "p_n1" || ev.ServiceID != iotda.ServiceOTA || ev.EventType != iotda.EventFirmwareUpgrade ||
		p.Version != "v2" || p.URL != srv.URL("fw.bin") || p.FileSize != int64(len(data)) || p.FileName != "fw.bin" ||
		p.Sign != hex.EncodeToString(sum[:]) || p.AccessToken == "" || p.AccessToken != task.Token || p.Expires != 60 ||
		p.TaskID != "t1" {
		t.Fatalf("event %+v paras %+v", evs, p)
	}
	if err := p.Validate(ev.EventType); err != nil {
		t.Fatalf("announced paras invalid: %v", err)
	}
	_, err = srv.StartOTA(gw1, []string{"p_n1"}, OTAPackage{Name: "sw.bin", Version: "s2", Data: data, Software: true, V2: true, NoSign: true})
	if err != nil {
		t.Fatal(err)
	}
	_, ev = d.recvEvent()
	p = iotda.UpgradeParas{}
	decodeParas(t, ev, &p)
	if ev.EventType != iotda.EventSoftwareUpgradeV2 || p.AccessToken != "" || p.Sign != "" || p.FileSize != 0 || p.Expires != 0 {
		t.Fatalf("v2 event %s %+v", ev.EventType, p)
	}
	if _, err := srv.StartOTA(gw1, []string{"ghost"}, OTAPackage{Name: "x.bin", Version: "v", Data: data}); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown device: %v", err)
	}
	if _, err := srv.StartOTA(gw1, nil, OTAPackage{Name: "x.bin", Data: data}); !errors.Is(err, ErrOTA) {
		t.Fatalf("no version: %v", err)
	}
	d.event("p_n1", iotda.ServiceOTA, iotda.EventUpgradeProgress, "", iotda.ProgressParas{ResultCode: 0, Progress: 40, Version: "v2"})
	d.event("p_n1", iotda.ServiceOTA, iotda.EventUpgradeProgress, "", iotda.ProgressParas{ResultCode: 0, Progress: 100, Version: "v2"})
	d.event("p_n1", iotda.ServiceOTA, iotda.EventVersionReport, "", iotda.VersionReportParas{FwVersion: "v2"})
	waitFor(t, s, "reports", func(v *View) bool {
		ps, vs := v.UpgradeProgress("p_n1"), v.VersionReports("p_n1")
		return len(ps) == 2 && ps[0].Progress == 40 && ps[1].Progress == 100 && len(vs) == 1 && vs[0].FwVersion == "v2"
	})
}

// TestOTAServerWithoutSim: StartOTA needs a simulator; Close is idempotent
// and removes the temporary CA directory.
func TestOTAServerWithoutSim(t *testing.T) {
	srv, err := NewOTAServer(nil, OTAServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.StartOTA(gw1, []string{"x"}, OTAPackage{Name: "a", Version: "v", Data: []byte("x")}); !errors.Is(err, ErrOTA) {
		t.Fatalf("StartOTA without sim: %v", err)
	}
	ca := srv.CAFile()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := srv.Publish(OTAPackage{Name: "a", Data: []byte("x")}); !errors.Is(err, ErrOTA) {
		t.Fatalf("Publish after Close: %v", err)
	}
	if _, err := os.Stat(ca); !os.IsNotExist(err) {
		t.Fatalf("temporary CA file left behind: %v", err)
	}
}
