package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testClock is a settable clock.
type testClock struct{ t time.Time }

func (c *testClock) now() time.Time { return c.t }

func putPkg(t *testing.T, c *otaCache, data []byte) string {
	t.Helper()
	sum := sha256.Sum256(data)
	sign := hex.EncodeToString(sum[:])
	if err := c.reserve(sign, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.partPath(sign), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.commit(sign, sign, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	return sign
}

// TestOTACacheEvictsLeastRecentlyUsedUnpinned: making room deletes the
// least recently used package no job pins; pinned packages stay, and a
// cache full of pinned packages refuses.
func TestOTACacheEvictsLeastRecentlyUsedUnpinned(t *testing.T) {
	dir := t.TempDir()
	clk := &testClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	var gauge int64
	c, err := newOTACache(dir, 300, clk.now, func(n int64) { gauge = n }, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	a := putPkg(t, c, []byte(strings.Repeat("a", 100)))
	clk.t = clk.t.Add(time.Second)
	b := putPkg(t, c, []byte(strings.Repeat("b", 100)))
	clk.t = clk.t.Add(time.Second)
	if _, ok := c.pin(a); !ok {
		t.Fatal("pin a")
	}
	cc := putPkg(t, c, []byte(strings.Repeat("c", 100)))
	if gauge != 300 {
		t.Fatalf("gauge %d", gauge)
	}
	// Room for 100 more: b is the LRU unpinned one (a is pinned).
	clk.t = clk.t.Add(time.Second)
	d := putPkg(t, c, []byte(strings.Repeat("d", 100)))
	if cached, _ := c.state(b); cached {
		t.Fatal("b not evicted")
	}
	for _, s := range []string{a, cc, d} {
		if cached, _ := c.state(s); !cached {
			t.Fatalf("%s evicted", s[:8])
		}
	}
	if _, err := os.Stat(filepath.Join(dir, b)); !os.IsNotExist(err) {
		t.Fatalf("b's file remains: %v", err)
	}
	buf := make([]byte, 10)
	if err := c.readAt(a, buf, 90); err != nil || string(buf) != strings.Repeat("a", 10) {
		t.Fatalf("readAt: %q %v", buf, err)
	}
	if err := c.readAt(d, buf, 0); !errors.Is(err, errOTANotCached) {
		t.Fatalf("readAt of an unpinned package: %v", err)
	}
	c.pin(cc)
	c.pin(d)
	if err := c.reserve("x", 100); !errors.Is(err, errOTACacheFull) {
		t.Fatalf("reserve with everything pinned: %v", err)
	}
	if err := c.reserve("y", 301); !errors.Is(err, errOTACacheFull) {
		t.Fatalf("reserve above the bound: %v", err)
	}
	c.unpin(a)
	if err := c.reserve("x", 100); err != nil {
		t.Fatalf("reserve after unpin: %v", err)
	}
	c.close()
}

// TestOTACacheScan: a restart indexes complete packages as unverified,
// keeps the partial files still needed, deletes the others, and a package
// whose bytes do not match its name is dropped on verification.
func TestOTACacheScan(t *testing.T) {
	dir := t.TempDir()
	clk := &testClock{t: time.Now()}
	c, err := newOTACache(dir, 1<<20, clk.now, nil, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	good := putPkg(t, c, []byte("good package"))
	bad := strings.Repeat("ab", 32)
	os.WriteFile(filepath.Join(dir, bad), []byte("not what the name says"), 0o600)
	os.WriteFile(filepath.Join(dir, "keep"+partSuffix), []byte("12345"), 0o600)
	os.WriteFile(filepath.Join(dir, "drop"+partSuffix), []byte("12345"), 0o600)
	os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o600)

	c, err = newOTACache(dir, 1<<20, clk.now, nil, func(k string) bool { return k == "keep" })
	if err != nil {
		t.Fatal(err)
	}
	if cached, verified := c.state(good); !cached || verified {
		t.Fatalf("good after restart: cached %v verified %v", cached, verified)
	}
	if _, ok := c.pin(good); ok {
		t.Fatal("an unverified package was pinned")
	}
	if err := c.verify(good); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.pin(good); !ok {
		t.Fatal("verified package not pinnable")
	}
	if err := c.verify(bad); !errors.Is(err, errOTANotCached) {
		t.Fatalf("verify bad: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, bad)); !os.IsNotExist(err) {
		t.Fatal("bad package kept")
	}
	if _, err := os.Stat(filepath.Join(dir, "keep"+partSuffix)); err != nil {
		t.Fatal("needed partial file deleted")
	}
	if _, err := os.Stat(filepath.Join(dir, "drop"+partSuffix)); !os.IsNotExist(err) {
		t.Fatal("orphan partial file kept")
	}
	if _, err := os.Stat(filepath.Join(dir, "README")); err != nil {
		t.Fatal("foreign file touched")
	}
	c.close()
}

// TestOTADownloadExpiredToken: a token past its expires is not used; the
// job fails at once without a request.
func TestOTADownloadExpiredToken(t *testing.T) {
	clk := &testClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	c, err := newOTACache(t.TempDir(), 1<<20, clk.now, nil, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	d := &otaDownloader{cache: c, timeout: time.Second, attempts: 1, now: clk.now}
	exp := tokenExpiry(clk.t, 60)
	if !exp.Equal(clk.t.Add(time.Minute)) {
		t.Fatalf("expires 60 = %v", exp)
	}
	clk.t = clk.t.Add(61 * time.Second)
	r := d.fetch(context.Background(), dlTask{key: strings.Repeat("0", 64), url: "https://127.0.0.1:1/p", token: "t",
		expiry: exp, size: 10, sign: strings.Repeat("0", 64)})
	if r.err == nil || !r.permanent || r.code != 255 || !strings.Contains(r.err.Error(), "expired") {
		t.Fatalf("result %+v", r)
	}
	if !tokenExpiry(clk.t, 0).IsZero() || !tokenExpiry(clk.t, -5).IsZero() {
		t.Fatal("no expires must mean no expiry")
	}
}

func TestParseContentRange(t *testing.T) {
	for _, c := range []struct {
		in         string
		s, e, size int64
		ok         bool
	}{
		{"bytes 100-199/200", 100, 199, 200, true},
		{"bytes 0-0/1", 0, 0, 1, true},
		{"bytes 100-199/*", 0, 0, 0, false},
		{"bytes 200-100/300", 0, 0, 0, false},
		{"bytes 0-199/199", 0, 0, 0, false},
		{"items 0-1/2", 0, 0, 0, false},
		{"", 0, 0, 0, false},
	} {
		s, e, size, ok := parseContentRange(c.in)
		if ok != c.ok || s != c.s || e != c.e || size != c.size {
			t.Errorf("%q: %d %d %d %v", c.in, s, e, size, ok)
		}
	}
}
