package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/subgate/subgate/subdevice"
)

func dev(i int) subdevice.Device {
	return subdevice.Device{
		NodeID:    "node-" + string(rune('a'+i)),
		DeviceID:  "prod_node-" + string(rune('a'+i)),
		ProductID: "prod",
		Status:    subdevice.Online,
		FwVersion: "1.0",
		LastSeen:  time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

func TestOpenCreatesDirAndFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s := openTest(t, Options{Dir: dir, NoSync: true})
	_ = s
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", fi.Mode().Perm())
	}
	fi, err = os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	ctx := testCtx(t)
	clk := newFakeClock()
	s, err := Open(Options{Dir: dir, NoSync: true, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	devs := []subdevice.Device{dev(1), dev(0), dev(2)}
	if err := s.PutDevices(ctx, devs); err != nil {
		t.Fatal(err)
	}
	if err := s.SetVersion(ctx, 42); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret(ctx, "node-a", []byte("s3cret")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutMeta(ctx, "bootstrap", []byte(`{"host":"x"}`)); err != nil {
		t.Fatal(err)
	}
	seqs, err := s.Append(ctx, msg("prod_node-a", "one"), msg("prod_node-b", "two"),
		Item{Kind: KindCustom, DeviceID: "prod_node-c", Topic: "t/x", Payload: []byte("three")})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seqs, []uint64{1, 2, 3}) {
		t.Fatalf("seqs %v", seqs)
	}
	want := s.OutboxStats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	checkDB(t, dir)

	s = openTest(t, Options{Dir: dir, NoSync: true, Now: clk.Now})
	v, got, err := s.LoadDevices()
	if err != nil {
		t.Fatal(err)
	}
	if v != 42 {
		t.Errorf("version %d, want 42", v)
	}
	wantDevs := []subdevice.Device{dev(0), dev(1), dev(2)}
	if !slices.EqualFunc(got, wantDevs, func(a, b subdevice.Device) bool {
		return a.NodeID == b.NodeID && a.DeviceID == b.DeviceID && a.Status == b.Status && a.LastSeen.Equal(b.LastSeen) && a.FwVersion == b.FwVersion
	}) {
		t.Errorf("devices %+v, want %+v", got, wantDevs)
	}
	sec, ok, err := s.Secret("node-a")
	if err != nil || !ok || string(sec) != "s3cret" {
		t.Errorf("Secret = %q %v %v", sec, ok, err)
	}
	m, ok, err := s.Meta("bootstrap")
	if err != nil || !ok || string(m) != `{"host":"x"}` {
		t.Errorf("Meta = %q %v %v", m, ok, err)
	}
	if st := s.OutboxStats(); st.Messages != want.Messages || st.Bytes != want.Bytes || !st.Oldest.Equal(want.Oldest) {
		t.Errorf("stats after reopen %+v, want %+v", st, want)
	}
	if st := s.OutboxStats(); st.Messages != 3 || st.Bytes != int64(len("one")+len("two")+len("three")) || !st.Oldest.Equal(clk.Now()) {
		t.Errorf("stats %+v", st)
	}
	items, err := s.Peek(0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 3 || items[2].Topic != "t/x" || items[2].Kind != KindCustom || string(items[1].Payload) != "two" {
		t.Errorf("items %+v", items)
	}
	// New sequences continue after the old ones.
	seqs, err = s.Append(ctx, msg("prod_node-a", "four"))
	if err != nil || !slices.Equal(seqs, []uint64{4}) {
		t.Errorf("Append after reopen = %v %v", seqs, err)
	}
}

func TestSchemaVersionChecked(t *testing.T) {
	cases := []struct {
		name string
		edit func(tx *bbolt.Tx) error
	}{
		{"newer", func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchemaVersion, u64(schemaVersion+1)) }},
		{"missing", func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Delete(keySchemaVersion) }},
		{"malformed", func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte{1}) }},
		{"older without migration", func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchemaVersion, u64(0)) }},
		{"foreign file", func(tx *bbolt.Tx) error { return tx.DeleteBucket(bucketMeta) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(Options{Dir: dir, NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			rawUpdate(t, dir, tc.edit)
			var before []byte
			rawUpdate(t, dir, func(tx *bbolt.Tx) error {
				if b := tx.Bucket(bucketMeta); b != nil {
					before = bytes.Clone(b.Get(keySchemaVersion))
				}
				return nil
			})
			s, err = Open(Options{Dir: dir, NoSync: true})
			if !errors.Is(err, ErrSchema) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("Open = %v, want ErrSchema", err)
			}
			// The refused file is left as it was, and unlocked.
			rawUpdate(t, dir, func(tx *bbolt.Tx) error {
				var after []byte
				if b := tx.Bucket(bucketMeta); b != nil {
					after = b.Get(keySchemaVersion)
				}
				if !bytes.Equal(before, after) {
					t.Errorf("schema version changed from %x to %x", before, after)
				}
				return nil
			})
		})
	}
}

func TestSecondOpenFailsWithLockTimeout(t *testing.T) {
	dir := t.TempDir()
	_ = openTest(t, Options{Dir: dir, NoSync: true})
	s2, err := Open(Options{Dir: dir, NoSync: true, LockTimeout: 100 * time.Millisecond})
	if err == nil {
		s2.Close()
		t.Fatal("second Open succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), filepath.Join(dir, FileName)) {
		t.Errorf("error %q does not name the file", err)
	}
}

func TestDevices(t *testing.T) {
	ctx := testCtx(t)
	s := openTest(t, Options{})
	if err := s.PutDevices(ctx, []subdevice.Device{dev(0), dev(1), dev(2)}); err != nil {
		t.Fatal(err)
	}
	// One notification: add d3, delete d0, version 7, atomically.
	if err := s.ApplyNotify(ctx, 7, []subdevice.Device{dev(3)}, []string{dev(0).DeviceID, "absent"}); err != nil {
		t.Fatal(err)
	}
	v, got, err := s.LoadDevices()
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(got))
	for i, d := range got {
		ids[i] = d.DeviceID
	}
	if v != 7 || !slices.Equal(ids, []string{dev(1).DeviceID, dev(2).DeviceID, dev(3).DeviceID}) {
		t.Fatalf("LoadDevices = %d %v", v, ids)
	}
	if err := s.DeleteDevices(ctx, []string{dev(1).DeviceID}); err != nil {
		t.Fatal(err)
	}
	// A negative version leaves the stored one alone.
	if err := s.ApplyNotify(ctx, -1, []subdevice.Device{dev(4)}, nil); err != nil {
		t.Fatal(err)
	}
	v, got, err = s.LoadDevices()
	if err != nil || v != 7 || len(got) != 3 {
		t.Fatalf("LoadDevices = %d %d %v", v, len(got), err)
	}

	// A bad record anywhere in the batch writes nothing.
	bad := dev(5)
	bad.NodeID = "bad node"
	if err := s.ApplyNotify(ctx, 9, []subdevice.Device{dev(6), bad}, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ApplyNotify(bad) = %v, want ErrInvalid", err)
	}
	bad = dev(5)
	bad.Status = "WEIRD"
	if err := s.PutDevices(ctx, []subdevice.Device{bad}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutDevices(bad status) = %v, want ErrInvalid", err)
	}
	if err := s.DeleteDevices(ctx, []string{""}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("DeleteDevices(\"\") = %v, want ErrInvalid", err)
	}
	if err := s.SetVersion(ctx, -3); !errors.Is(err, ErrInvalid) {
		t.Fatalf("SetVersion(-3) = %v, want ErrInvalid", err)
	}
	v, got, err = s.LoadDevices()
	if err != nil || v != 7 || len(got) != 3 {
		t.Fatalf("after refused writes LoadDevices = %d %d %v", v, len(got), err)
	}
}

func TestCorruptDeviceRecordReported(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutDevices(testCtx(t), []subdevice.Device{dev(0)}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	rawUpdate(t, dir, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketDevices).Put([]byte(dev(0).DeviceID), []byte{deviceFormatV1, '{'})
	})
	s = openTest(t, Options{Dir: dir, NoSync: true})
	if _, _, err := s.LoadDevices(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), dev(0).DeviceID) {
		t.Fatalf("LoadDevices = %v, want ErrCorrupt naming the key", err)
	}
}

func TestSecretsAndMeta(t *testing.T) {
	ctx := testCtx(t)
	s := openTest(t, Options{})
	if _, ok, err := s.Secret("node-x"); ok || err != nil {
		t.Fatalf("Secret(absent) = %v %v", ok, err)
	}
	in := []byte("abc")
	if err := s.PutSecret(ctx, "node-x", in); err != nil {
		t.Fatal(err)
	}
	in[0] = 'X' // the store kept its own copy
	got, ok, err := s.Secret("node-x")
	if err != nil || !ok || string(got) != "abc" {
		t.Fatalf("Secret = %q %v %v", got, ok, err)
	}
	got[0] = 'Y' // and hands out copies
	if again, _, _ := s.Secret("node-x"); string(again) != "abc" {
		t.Fatalf("Secret after caller edit = %q", again)
	}
	if err := s.DeleteSecret(ctx, "node-x"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Secret("node-x"); ok {
		t.Fatal("secret survived delete")
	}
	if err := s.PutSecret(ctx, "bad node", []byte("x")); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutSecret(bad node) = %v", err)
	}
	if err := s.PutSecret(ctx, "node-x", nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutSecret(empty) = %v", err)
	}
	if err := s.PutSecret(ctx, "node-x", make([]byte, MaxSecretLen+1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutSecret(huge) = %v", err)
	}

	// User keys cannot clobber the store's own meta keys.
	if err := s.PutMeta(ctx, string(keySchemaVersion), []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutMeta(ctx, string(keyListVersion), []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	if v, _, err := s.LoadDevices(); err != nil || v != 0 {
		t.Fatalf("LoadDevices after user meta = %d %v", v, err)
	}
	if got, ok, _ := s.Meta(string(keySchemaVersion)); !ok || string(got) != "garbage" {
		t.Fatalf("Meta = %q %v", got, ok)
	}
	if err := s.PutMeta(ctx, string(keySchemaVersion), nil); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Meta(string(keySchemaVersion)); ok {
		t.Fatal("meta survived delete")
	}
	if err := s.PutMeta(ctx, "", []byte("x")); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutMeta(empty key) = %v", err)
	}
	if err := s.PutMeta(ctx, strings.Repeat("k", MaxMetaKeyLen+1), []byte("x")); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutMeta(long key) = %v", err)
	}
	if err := s.PutMeta(ctx, "k", make([]byte, MaxMetaValueLen+1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutMeta(huge) = %v", err)
	}
}

func TestCloseIdempotentAndFinal(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true, CommitInterval: time.Hour, CommitMaxOps: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// Queued async appends are committed by Close even though the writer is
	// still gathering (CommitInterval is an hour).
	const n = 50
	results := make(chan error, n)
	for i := range n {
		if err := s.AppendAsync(msg("dev", payloadOf(i)), func(_ uint64, err error) { results <- err }); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := <-results; err != nil {
			t.Fatalf("async append: %v", err)
		}
	}
	select {
	case <-s.writerDone:
	default:
		t.Fatal("writer still running after Close")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if !s.Closed() {
		t.Fatal("Closed() = false")
	}
	ctx := testCtx(t)
	if _, err := s.Append(ctx, msg("dev", "x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close = %v", err)
	}
	if err := s.AppendAsync(msg("dev", "x"), func(uint64, error) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("AppendAsync after Close = %v", err)
	}
	if err := s.Ack(1); !errors.Is(err, ErrClosed) {
		t.Errorf("Ack after Close = %v", err)
	}
	if _, err := s.Peek(0, 1, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Peek after Close = %v", err)
	}
	if _, _, err := s.Secret("node"); !errors.Is(err, ErrClosed) {
		t.Errorf("Secret after Close = %v", err)
	}
	if _, _, err := s.LoadDevices(); !errors.Is(err, ErrClosed) {
		t.Errorf("LoadDevices after Close = %v", err)
	}
	if err := s.PutMeta(ctx, "k", []byte("v")); !errors.Is(err, ErrClosed) {
		t.Errorf("PutMeta after Close = %v", err)
	}

	s = openTest(t, Options{Dir: dir, NoSync: true})
	if st := s.OutboxStats(); st.Messages != n {
		t.Fatalf("after reopen %d messages, want %d", st.Messages, n)
	}
}

func TestOptionsValidate(t *testing.T) {
	if err := (Options{Dir: "x"}).Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	bad := []Options{
		{},
		{Dir: "x", Overflow: "newest"},
		{Dir: "x", CommitMaxOps: -1},
		{Dir: "x", QueueSize: -1},
		{Dir: "x", OutboxMaxBytes: -1},
		{Dir: "x", LockTimeout: -time.Second},
		{Dir: "x", OutboxMaxBytes: 10, MaxPayloadBytes: 11},
	}
	for _, o := range bad {
		if err := o.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", o)
		}
		if s, err := Open(o); err == nil {
			s.Close()
			t.Errorf("Open(%+v) succeeded", o)
		}
	}
}

func TestLogLimiter(t *testing.T) {
	clk := newFakeClock()
	l := logLimiter{now: clk.Now}
	if ok, n := l.note(limitQueueFull, 1); !ok || n != 1 {
		t.Fatalf("first note = %v %d", ok, n)
	}
	for range 5 {
		if ok, _ := l.note(limitQueueFull, 2); ok {
			t.Fatal("logged within the interval")
		}
	}
	if ok, _ := l.note(limitOutboxFull, 1); !ok {
		t.Fatal("reasons share a limit")
	}
	clk.Advance(logEvery)
	if ok, n := l.note(limitQueueFull, 1); !ok || n != 11 {
		t.Fatalf("after interval note = %v %d, want true 11", ok, n)
	}
}
