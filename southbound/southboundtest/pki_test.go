package southboundtest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
)

// TestCAIssue: server and client certificates chain to their CA for their
// own use and names only, and not to another CA.
func TestCAIssue(t *testing.T) {
	ca := NewCA(t, "test CA")
	rogue := NewCA(t, "rogue CA")
	if !ca.Cert.IsCA || ca.Cert.Subject.CommonName != "test CA" {
		t.Fatalf("CA certificate: IsCA %v, subject %v", ca.Cert.IsCA, ca.Cert.Subject)
	}
	if ca.Cert.SerialNumber.Cmp(rogue.Cert.SerialNumber) == 0 {
		t.Fatal("two CAs share a serial number")
	}

	_, _, srv := ca.Issue(t, "gw.test", true)
	leaf, err := x509.ParseCertificate(srv.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	serverUse := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	for _, name := range []string{"localhost", "127.0.0.1", "::1", "gw.test"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: name, KeyUsages: serverUse}); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "example.com", KeyUsages: serverUse}); err == nil {
		t.Error("server certificate verified for a name it does not carry")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: rogue.Pool(), DNSName: "localhost", KeyUsages: serverUse}); err == nil {
		t.Error("server certificate verified against another CA")
	}

	certPEM, keyPEM, cli := ca.Issue(t, "node-1", false)
	leaf, err = x509.ParseCertificate(cli.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "node-1" || len(leaf.DNSNames) != 0 || len(leaf.IPAddresses) != 0 {
		t.Errorf("client certificate: subject %v, DNS %v, IP %v", leaf.Subject, leaf.DNSNames, leaf.IPAddresses)
	}
	clientUse := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: clientUse}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: serverUse}); err == nil {
		t.Error("client certificate verified for server use")
	}
	if !bytes.Contains(certPEM, []byte("BEGIN CERTIFICATE")) || !bytes.Contains(keyPEM, []byte("BEGIN EC PRIVATE KEY")) {
		t.Errorf("PEM blocks: %q / %q", certPEM, keyPEM)
	}
}

// TestCAWriteFiles: the files written load as a key pair and a CA pool.
func TestCAWriteFiles(t *testing.T) {
	ca := NewCA(t, "file CA")
	dir := t.TempDir()
	certFile, keyFile := ca.WriteFiles(t, dir, "server", "localhost", true)
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Fatalf("written key pair: %v", err)
	}
	for _, f := range []string{certFile, keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	b, err := os.ReadFile(ca.WriteCA(t, dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if pool := x509.NewCertPool(); !pool.AppendCertsFromPEM(b) || !bytes.Equal(b, ca.CertPEM) {
		t.Fatal("written CA file is not the CA certificate")
	}
}
