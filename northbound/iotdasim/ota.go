package iotdasim

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

// OTA package server defaults.
const (
	DefaultOTATokenTTL = time.Hour
	// MaxOTAPackage bounds a package held in memory (IoTDA allows 1 GB on
	// OBS, iotda-protocol §7; a simulator needs far less).
	MaxOTAPackage = 256 << 20
)

// ErrOTA reports a bad OTAPackage or a stopped OTA server.
var ErrOTA = errors.New("iotdasim: OTA")

// OTAServerConfig configures NewOTAServer.
type OTAServerConfig struct {
	// Listen is the HTTPS address (default "127.0.0.1:0").
	Listen string
	// Dir receives ca.pem, the test CA's certificate (default: a new
	// temporary directory, removed by Close).
	Dir string
	// TokenTTL is the lifetime of the access tokens StartOTA issues for
	// v1 packages (default 1 h). The events announce it as `expires` in
	// seconds (iotda-protocol §4.2; the unit is UNCONFIRMED, subgate reads
	// seconds).
	TokenTTL time.Duration
	// Clock is the time source for token expiry and certificate validity
	// (default time.Now).
	Clock func() time.Time
	// Logger receives the server's logs (default discard).
	Logger *slog.Logger
}

// OTAPackage is a package to serve and announce (iotda-protocol §4.2).
type OTAPackage struct {
	// Name is the file name; the package is served at /ota/<Name>.
	Name    string
	Version string
	Data    []byte
	// Software announces software_upgrade instead of firmware_upgrade.
	Software bool
	// V2 announces the _v2 (OBS) event: the URL needs no token and no
	// access_token is sent.
	V2 bool
	// Sign and FileSize override what the event announces (default: the
	// SHA-256 of Data and its length), to test a gateway's checks.
	Sign     string
	FileSize int64
	// NoSign leaves sign (and with V2 also file_size) out of the event.
	NoSign bool
	// Expires overrides the announced token lifetime in seconds (default
	// TokenTTL); the token's real lifetime stays TokenTTL.
	Expires int64
	// Token overrides the announced access_token (v1), e.g. with an
	// expired or wrong one.
	Token string
	// TaskID goes into the event's task_id.
	TaskID string
	// CutAfter, when positive, makes the first whole-file GET send only
	// this many bytes and drop the connection, so a client must resume
	// with Range.
	CutAfter int64
}

// OTATask is what StartOTA announced.
type OTATask struct {
	EventType string
	URL       string
	Token     string
	Paras     iotda.UpgradeParas
}

// OTAStats counts what the server served for one package.
type OTAStats struct {
	// Requests counts GETs that were answered with package bytes (200 or
	// 206); RangeRequests those that asked for a range.
	Requests      int
	RangeRequests int
	// Unauthorized counts 401 answers.
	Unauthorized int
	// BytesServed counts body bytes written.
	BytesServed int64
	// Cut counts responses dropped on purpose (CutAfter).
	Cut int
}

// OTAServer is an HTTPS package server with a test CA, the package side of
// an IoTDA OTA task: it checks Bearer tokens (401 for a missing, wrong or
// expired one), serves ranges for resumed downloads and counts every
// request, and StartOTA sends the upgrade events through the simulator.
// Its methods are safe for concurrent use.
type OTAServer struct {
	sim    *Sim
	cfg    OTAServerConfig
	ln     net.Listener
	srv    *http.Server
	caPEM  []byte
	caFile string
	ownDir bool
	done   chan struct{}

	// mu guards the following fields.
	mu     sync.Mutex
	pkgs   map[string]*otaServed
	tokens map[string]otaToken
	closed bool
}

type otaServed struct {
	p     OTAPackage
	mod   time.Time
	cut   bool
	stats OTAStats
}

type otaToken struct {
	name    string
	expires time.Time
}

// NewOTAServer creates a test CA and a server certificate for 127.0.0.1,
// ::1 and localhost, writes the CA to Dir/ca.pem and starts serving HTTPS.
// sim may be nil when only the package server is needed (StartOTA then
// fails).
func NewOTAServer(sim *Sim, cfg OTAServerConfig) (*OTAServer, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = DefaultOTATokenTTL
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &OTAServer{sim: sim, cfg: cfg, pkgs: map[string]*otaServed{}, tokens: map[string]otaToken{}, done: make(chan struct{})}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "iotdasim-ota-")
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrOTA, err)
		}
		cfg.Dir, s.ownDir = dir, true
		s.cfg.Dir = dir
	}
	cert, caPEM, err := testServerCert(cfg.Clock())
	if err != nil {
		s.removeDir()
		return nil, err
	}
	s.caPEM = caPEM
	s.caFile = filepath.Join(cfg.Dir, "ca.pem")
	if err := os.WriteFile(s.caFile, caPEM, 0o600); err != nil {
		s.removeDir()
		return nil, fmt.Errorf("%w: %v", ErrOTA, err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		s.removeDir()
		return nil, fmt.Errorf("%w: listen: %v", ErrOTA, err)
	}
	s.ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ota/{name}", s.serve)
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(s.ln)
	}()
	return s, nil
}

func (s *OTAServer) removeDir() {
	if s.ownDir {
		_ = os.RemoveAll(s.cfg.Dir)
	}
}

// testServerCert makes an ECDSA CA and a leaf for the loopback names.
func testServerCert(now time.Time) (tls.Certificate, []byte, error) {
	fail := func(err error) (tls.Certificate, []byte, error) {
		return tls.Certificate{}, nil, fmt.Errorf("%w: test CA: %v", ErrOTA, err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fail(err)
	}
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "iotdasim OTA test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return fail(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fail(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fail(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fail(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}, caPEM, nil
}

// Addr is the server's address, host:port.
func (s *OTAServer) Addr() string { return s.ln.Addr().String() }

// CAFile is the path of the test CA certificate (PEM), for a client's
// trust store (subgate's ota.ca_file).
func (s *OTAServer) CAFile() string { return s.caFile }

// CAPEM returns the test CA certificate.
func (s *OTAServer) CAPEM() []byte { return bytes.Clone(s.caPEM) }

// URL is the address of the package named name.
func (s *OTAServer) URL(name string) string {
	return "https://" + s.Addr() + "/ota/" + url.PathEscape(name)
}

// Publish makes p downloadable (replacing a package of the same name) and
// returns its URL and, for a v1 package, a fresh access token valid for
// TokenTTL.
func (s *OTAServer) Publish(p OTAPackage) (u, token string, err error) {
	if p.Name == "" || strings.ContainsAny(p.Name, "/\\") || len(p.Data) == 0 || len(p.Data) > MaxOTAPackage {
		return "", "", fmt.Errorf("%w: a package needs a plain Name and 1 to %d bytes of Data", ErrOTA, MaxOTAPackage)
	}
	p.Data = bytes.Clone(p.Data)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", "", fmt.Errorf("%w: server closed", ErrOTA)
	}
	sp := s.pkgs[p.Name]
	if sp == nil {
		sp = &otaServed{}
		s.pkgs[p.Name] = sp
	}
	sp.p, sp.mod, sp.cut = p, s.cfg.Clock(), false
	if !p.V2 {
		raw := make([]byte, 16)
		if _, err := rand.Read(raw); err != nil {
			return "", "", fmt.Errorf("%w: token: %v", ErrOTA, err)
		}
		token = hex.EncodeToString(raw)
		s.tokens[token] = otaToken{name: p.Name, expires: s.cfg.Clock().Add(s.cfg.TokenTTL)}
	}
	return s.URL(p.Name), token, nil
}

// ExpireTokens ends every token issued so far: later downloads with them
// get 401, as with a platform token past its expires.
func (s *OTAServer) ExpireTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// Stats returns the counters of the package named name.
func (s *OTAServer) Stats(name string) OTAStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sp := s.pkgs[name]; sp != nil {
		return sp.stats
	}
	return OTAStats{}
}

// StartOTA publishes p and sends its upgrade event to each sub-device of
// gateway gw (iotda-protocol §4.2, §4.6: object_device_id is the
// sub-device). The returned task holds what was announced; the error joins
// the devices the event could not be sent to. Progress reports arrive as
// recorded events (View.UpgradeProgress).
func (s *OTAServer) StartOTA(gw string, deviceIDs []string, p OTAPackage) (OTATask, error) {
	if s.sim == nil {
		return OTATask{}, fmt.Errorf("%w: no simulator to send events", ErrOTA)
	}
	if p.Version == "" {
		return OTATask{}, fmt.Errorf("%w: a package needs a Version", ErrOTA)
	}
	u, token, err := s.Publish(p)
	if err != nil {
		return OTATask{}, err
	}
	sum := sha256.Sum256(p.Data)
	paras := iotda.UpgradeParas{
		Version: p.Version, URL: u, FileSize: int64(len(p.Data)), FileName: p.Name,
		Sign: hex.EncodeToString(sum[:]), TaskID: p.TaskID,
	}
	if p.Sign != "" {
		paras.Sign = p.Sign
	}
	if p.FileSize != 0 {
		paras.FileSize = p.FileSize
	}
	if p.NoSign {
		paras.Sign = ""
		if p.V2 {
			paras.FileSize = 0
		}
	}
	et := iotda.EventFirmwareUpgrade
	if p.Software {
		et = iotda.EventSoftwareUpgrade
	}
	if p.V2 {
		et += "_v2"
	} else {
		paras.AccessToken = token
		if p.Token != "" {
			paras.AccessToken = p.Token
		}
		paras.Expires = int64(s.cfg.TokenTTL / time.Second)
		if p.Expires != 0 {
			paras.Expires = p.Expires
		}
	}
	var errs []error
	for _, id := range deviceIDs {
		if err := s.sim.SendEvent(gw, id, iotda.ServiceOTA, et, paras); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
		}
	}
	return OTATask{EventType: et, URL: u, Token: token, Paras: paras}, errors.Join(errs...)
}

// serve answers GET /ota/{name}.
func (s *OTAServer) serve(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.mu.Lock()
	sp := s.pkgs[name]
	if sp == nil {
		s.mu.Unlock()
		http.Error(w, "no such package", http.StatusNotFound)
		return
	}
	if !sp.p.V2 && !s.authorizedLocked(r, name) {
		sp.stats.Unauthorized++
		s.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Bearer realm="iotdasim-ota", error="invalid_token"`)
		http.Error(w, "missing, wrong or expired access token", http.StatusUnauthorized)
		return
	}
	p, mod := sp.p, sp.mod
	ranged := r.Header.Get("Range") != ""
	sp.stats.Requests++
	if ranged {
		sp.stats.RangeRequests++
	}
	cut := !ranged && p.CutAfter > 0 && p.CutAfter < int64(len(p.Data)) && !sp.cut
	if cut {
		sp.cut = true
		sp.stats.Cut++
	}
	s.mu.Unlock()
	cw := &countingWriter{ResponseWriter: w}
	defer func() {
		s.mu.Lock()
		if sp := s.pkgs[name]; sp != nil {
			sp.stats.BytesServed += cw.n
		}
		s.mu.Unlock()
	}()
	if cut {
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", fmt.Sprint(len(p.Data)))
		h.Set("Accept-Ranges", "bytes")
		w.WriteHeader(http.StatusOK)
		_, _ = cw.Write(p.Data[:p.CutAfter])
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		// Drop the connection mid-body, as a broken link would.
		panic(http.ErrAbortHandler)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(cw, r, name, mod, bytes.NewReader(p.Data))
}

func (s *OTAServer) authorizedLocked(r *http.Request, name string) bool {
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	cred = strings.TrimSpace(cred)
	for tok, t := range s.tokens {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(cred)) == 1 {
			return t.name == name && s.cfg.Clock().Before(t.expires)
		}
	}
	return false
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Close stops the server, waits for it and removes its temporary files.
func (s *OTAServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.done
	s.removeDir()
	return err
}

// UpgradeProgress returns the upgrade_progress_report paras recorded for a
// sub-device, oldest first.
func (v *View) UpgradeProgress(deviceID string) []iotda.ProgressParas {
	var out []iotda.ProgressParas
	for _, e := range v.s.rec.events.items {
		if e.Event.EventType != iotda.EventUpgradeProgress || e.ObjectDeviceID != deviceID {
			continue
		}
		var p iotda.ProgressParas
		if json.Unmarshal(e.Event.Paras, &p) == nil {
			out = append(out, p)
		}
	}
	return out
}

// VersionReports returns the version_report paras recorded for a device,
// oldest first.
func (v *View) VersionReports(deviceID string) []iotda.VersionReportParas {
	var out []iotda.VersionReportParas
	for _, e := range v.s.rec.events.items {
		if e.Event.EventType != iotda.EventVersionReport || e.ObjectDeviceID != deviceID {
			continue
		}
		var p iotda.VersionReportParas
		if json.Unmarshal(e.Event.Paras, &p) == nil {
			out = append(out, p)
		}
	}
	return out
}
