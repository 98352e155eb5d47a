package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	start := time.Unix(1000, 0)
	b := newBucket(100, 2, start) // 10ms per token, two at once
	if d := b.take(start); d != 0 {
		t.Fatalf("first take waits %v", d)
	}
	if d := b.take(start); d != 0 {
		t.Fatalf("burst take waits %v", d)
	}
	// The bucket is empty: each further take at the same instant waits one
	// more interval, so callers that sleep as told keep the rate.
	for i, want := range []time.Duration{10 * time.Millisecond, 20 * time.Millisecond} {
		if d := b.take(start); d != want {
			t.Fatalf("take %d waits %v, want %v", i, d, want)
		}
	}
	// 20ms later the debt is paid; 50ms later the bucket is full again.
	if d := b.take(start.Add(20 * time.Millisecond)); d != 10*time.Millisecond {
		t.Fatalf("take after 20ms waits %v", d)
	}
	now := start.Add(time.Second)
	for range 2 {
		if d := b.take(now); d != 0 {
			t.Fatalf("refilled bucket waits %v", d)
		}
	}
	if d := b.take(now); d != 10*time.Millisecond {
		t.Fatalf("take beyond the burst waits %v", d)
	}
	if d := newBucket(0, 1, start).take(start); d != 0 {
		t.Fatalf("unlimited bucket waits %v", d)
	}
	// A clock that goes back does not refill.
	b = newBucket(1, 1, start)
	b.take(start)
	if d := b.take(start.Add(-time.Hour)); d != time.Second {
		t.Fatalf("take with an earlier clock waits %v", d)
	}
}

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 15, 16, 18, 31, 32, 1000, 1 << 20, 1<<40 + 12345, 1<<63 - 1, 1<<64 - 1} {
		i := bucketOf(v)
		if i <= prev && v > 0 {
			t.Errorf("bucketOf(%d) = %d, not above the previous %d", v, i, prev)
		}
		prev = i
		if i < 0 || i >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d out of range", v, i)
		}
		up := bucketUpper(i)
		if up < v {
			t.Errorf("bucketUpper(%d) = %d below %d", i, up, v)
		}
		// Width bound: the bucket's top is within 1/8 of any value in it.
		if v >= histLinear && float64(up-v) > float64(v)/histSub {
			t.Errorf("bucket of %d ends at %d: wider than 1/%d", v, up, histSub)
		}
		if i > 0 && bucketUpper(i-1) >= v {
			t.Errorf("value %d also fits bucket %d", v, i-1)
		}
	}
	// Bucket tops are contiguous.
	for i := 1; i < histBuckets; i++ {
		if bucketOf(bucketUpper(i-1)+1) != i {
			t.Fatalf("bucket %d does not start after bucket %d", i, i-1)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	if h.quantile(0.5) != 0 {
		t.Fatal("empty histogram has a median")
	}
	for i := 1; i <= 100; i++ {
		h.observe(time.Duration(i) * time.Millisecond)
	}
	h.observe(-time.Second) // counts as 0
	within := func(got, want time.Duration) bool {
		return got >= want && float64(got-want) <= float64(want)/histSub
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.9, 90 * time.Millisecond}, {0.99, 99 * time.Millisecond}} {
		if got := h.quantile(c.q); !within(got, c.want) {
			t.Errorf("quantile(%v) = %v, want within 1/8 above %v", c.q, got, c.want)
		}
	}
	if got := h.quantile(1); got != 100*time.Millisecond {
		t.Errorf("quantile(1) = %v, want the max", got)
	}
	if got := h.quantile(0.001); got != 0 {
		t.Errorf("quantile(0.001) = %v, want the negative sample as 0", got)
	}
}

func TestParseSources(t *testing.T) {
	got, err := parseSources(" 127.0.0.2-127.0.0.4, 10.0.0.1 ,::1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "10.0.0.1", "::1"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got %v, want %v", got, want)
	}
	if got, err := parseSources(""); err != nil || got != nil {
		t.Errorf("empty: %v %v", got, err)
	}
	if got, err := parseSources("255.255.255.254-255.255.255.255"); err != nil || len(got) != 2 {
		t.Errorf("range at the top of the space: %v %v", got, err)
	}
	for _, bad := range []string{"x", "127.0.0.5-127.0.0.1", "127.0.0.1-::1", "127.0.0.1-", "fe80::1%eth0", "10.0.0.0-10.1.0.0", ","} {
		if _, err := parseSources(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseSources(f *testing.F) {
	for _, s := range []string{"127.0.0.2-127.0.0.254", "::1,10.0.0.1", "1.2.3.4-1.2.3.4", "a-b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseSources(s)
		if err != nil {
			return
		}
		if len(got) > maxSources {
			t.Fatalf("%d sources", len(got))
		}
		for _, a := range got {
			if strings.ContainsAny(a, "-,") || a == "" {
				t.Fatalf("bad source %q", a)
			}
		}
	})
}

func TestCapDevices(t *testing.T) {
	for _, c := range []struct {
		n      int
		limit  uint64
		want   int
		capped bool
	}{
		{1000, 0, 1000, false},
		{1000, 20000, 1000, false},
		{19000, 20000, 19000, false},
		{20000, 20000, 20000 - fdReserve, true},
		{10, fdReserve, 0, true},
		{10, 1 << 62, 10, false},
	} {
		if got, capped := capDevices(c.n, c.limit); got != c.want || capped != c.capped {
			t.Errorf("capDevices(%d, %d) = %d, %v; want %d, %v", c.n, c.limit, got, capped, c.want, c.capped)
		}
	}
}

func TestWindow(t *testing.T) {
	w := newWindow(2)
	s1, ok1 := w.add(time.Second)
	s2, ok2 := w.add(2 * time.Second)
	if !ok1 || !ok2 || s1 == 0 || s2 == s1 {
		t.Fatalf("seqs %d %d", s1, s2)
	}
	if _, ok := w.add(3 * time.Second); ok {
		t.Fatal("full window took a report")
	}
	if sent, ok := w.remove(s1); !ok || sent != time.Second {
		t.Fatalf("remove(%d) = %v, %v", s1, sent, ok)
	}
	if _, ok := w.remove(s1); ok {
		t.Fatal("seq removed twice")
	}
	if _, ok := w.remove(0); ok {
		t.Fatal("seq 0 removed")
	}
	if w.pending() != 1 {
		t.Fatalf("pending %d", w.pending())
	}
	// Seqs skip 0 when they wrap.
	w.last = 1<<32 - 1
	if s, ok := w.add(0); !ok || s != 1 {
		t.Fatalf("after wrap: %d %v", s, ok)
	}
}

func TestSecrets(t *testing.T) {
	// openssl: echo -n dev1 | openssl dgst -sha256 -hmac master-key
	const want = "ea00bb384fa20426d7c0e7bf95f47a2f436be671279f31d2e9a10ae90b447b32"
	c := config{Secret: []byte("master-key"), Derive: true}
	if got := string(c.secretFor("dev1")); got != want {
		t.Errorf("derived secret %s", got)
	}
	c.Derive = false
	if got := string(c.secretFor("dev1")); got != "master-key" {
		t.Errorf("shared secret %s", got)
	}
	if (&config{}).secretFor("dev1") != nil {
		t.Error("secret without a key")
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "secret")
	if err := os.WriteFile(path, []byte("s3cret\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := readSecretFile(path); err != nil || string(b) != "s3cret" {
		t.Errorf("readSecretFile = %q, %v", b, err)
	}
	for name, content := range map[string]string{"empty": "\n", "big": strings.Repeat("x", maxSecretFile+1)} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := readSecretFile(p); err == nil {
			t.Errorf("%s secret file accepted", name)
		}
	}
	if _, err := readSecretFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing secret file accepted")
	}
	if b, err := parseSecretHex("00ff"); err != nil || string(b) != "\x00\xff" {
		t.Errorf("parseSecretHex = %q, %v", b, err)
	}
	for _, bad := range []string{"", "0", "zz"} {
		if _, err := parseSecretHex(bad); err == nil {
			t.Errorf("-secret-hex %q accepted", bad)
		}
	}
}

func TestPayload(t *testing.T) {
	for _, n := range []int{0, 1, 64, 1000} {
		p := payload(n)
		if len(p) != n || strings.ContainsAny(p, "|\r\n\"\\") {
			t.Errorf("payload(%d) = %q", n, p)
		}
		var v string
		if err := json.Unmarshal([]byte(`"`+p+`"`), &v); err != nil || v != p {
			t.Errorf("payload(%d) is not a plain JSON string: %v", n, err)
		}
	}
}

func TestSummaryLine(t *testing.T) {
	var st stats
	st.connected.Add(3)
	st.failed.Add(1)
	st.lastConnect.Store(int64(time.Second))
	st.framesOut.Add(10)
	st.acks.Add(2)
	st.ackLatency.observe(1500 * time.Microsecond)
	st.ackLatency.observe(2 * time.Millisecond)
	st.kinds[kindDial].Add(1)
	st.downErr[6].Add(4) // busy
	st.downErr[codeSlot(200)].Add(1)
	sum := st.summarize(phaseDone, 4, 2*time.Second)
	line := sum.Line()
	for _, want := range []string{
		"devicesim: connected=3/4 failed=1 online=0 connect_rate=3/s ",
		" frames_out=10 ", " acks=2 ", " errors=6 busy=4 ", " ack_p50=", " ack_p99=2.00ms ",
		" elapsed=2s", " err_dial=1", " err_error_busy=4", " err_error_other=1",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
	if strings.Contains(line, "progress") || strings.Count(line, "\n") != 0 {
		t.Errorf("final line %q", line)
	}
	if p := st.summarize(phaseConnecting, 4, 2*time.Second); !strings.HasPrefix(p.Line(), "devicesim: progress phase=connecting connected=3/4") || p.ConnectRate != 1.5 {
		t.Errorf("progress line %q rate %v", p.Line(), p.ConnectRate)
	}
	b, err := sum.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var back Summary
	if err := json.Unmarshal(b, &back); err != nil || back.Busy != 4 || back.ErrorKinds["dial"] != 1 || back.AckMaxMS != 2 {
		t.Errorf("JSON %s: %+v %v", b, back, err)
	}
	for v, want := range map[float64]string{0.043: "43us", 1.5: "1.50ms", 2500: "2.50s"} {
		if got := fmtMS(v); got != want {
			t.Errorf("fmtMS(%v) = %s, want %s", v, got, want)
		}
	}
}

func BenchmarkHistogramObserve(b *testing.B) {
	var h histogram
	b.ReportAllocs()
	d := time.Duration(0)
	for b.Loop() {
		d += 977
		h.observe(d)
	}
}
