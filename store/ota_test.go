package store

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func otaJob(id, dev string) OTAJob {
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	return OTAJob{
		ID: id, DeviceID: dev, EventType: "firmware_upgrade", TaskID: "t1",
		Version: "v2", URL: "https://127.0.0.1/p.bin", AccessToken: "tok", TokenExpiry: at.Add(time.Hour),
		FileName: "p.bin", FileSize: 1024, Sign: strings.Repeat("ab", 32),
		State: "transferring", Offset: 512, Attempts: 1, Created: at, Updated: at,
	}
}

// TestOTAJobsRoundTrip: jobs written synchronously and asynchronously come
// back equal after a reopen; deletes remove them.
func TestOTAJobsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, Options{Dir: dir, NoSync: true})
	if jobs, err := s.LoadOTAJobs(); err != nil || len(jobs) != 0 {
		t.Fatalf("fresh file: %v, %v", jobs, err)
	}
	a, b, c := otaJob("a", "p_d1"), otaJob("b", "p_d2"), otaJob("c", "p_d3")
	if err := s.PutOTAJobs(testCtx(t), a, b); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	c.State = "succeeded"
	if err := s.UpdateOTAJobsAsync([]OTAJob{c}, []string{"a"}, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-testCtx(t).Done():
		t.Fatal("async write not committed")
	}
	jobs, err := s.LoadOTAJobs()
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 2 || jobs[0].ID != "b" || jobs[1].ID != "c" || jobs[1].State != "succeeded" {
		t.Fatalf("jobs = %+v", jobs)
	}
	got, ok, err := s.OTAJobByID("b")
	if err != nil || !ok {
		t.Fatalf("OTAJobByID: %v %v", ok, err)
	}
	if got.AccessToken != "tok" || got.Offset != 512 || !got.TokenExpiry.Equal(b.TokenExpiry) || got.Sign != b.Sign {
		t.Fatalf("round trip: %+v", got)
	}
	if _, ok, _ := s.OTAJobByID("a"); ok {
		t.Fatal("deleted job still there")
	}
	if err := s.DeleteOTAJobs(testCtx(t), "b", "absent"); err != nil {
		t.Fatal(err)
	}
	if jobs, _ := s.LoadOTAJobs(); len(jobs) != 1 {
		t.Fatalf("after delete: %+v", jobs)
	}
}

// TestOTAJobsOldFile: a file written before the jobs bucket existed (it
// has no ota_jobs bucket) opens, reads as empty, and takes jobs.
func TestOTAJobsOldFile(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutOTAJobs(testCtx(t), otaJob("x", "p_d1")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, dir, func(tx *bbolt.Tx) error { return tx.DeleteBucket(bucketOTAJobs) })
	s = openTest(t, Options{Dir: dir, NoSync: true})
	if jobs, err := s.LoadOTAJobs(); err != nil || len(jobs) != 0 {
		t.Fatalf("old file: %v, %v", jobs, err)
	}
	if _, ok, err := s.OTAJobByID("x"); ok || err != nil {
		t.Fatalf("OTAJobByID on old file: %v %v", ok, err)
	}
	if err := s.UpdateOTAJobsAsync([]OTAJob{otaJob("y", "p_d1")}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if jobs, err := s.LoadOTAJobs(); err != nil || len(jobs) != 1 {
		t.Fatalf("after put: %v, %v", jobs, err)
	}
}

// TestOTAJobsInvalid: bad jobs are refused and nothing is written.
func TestOTAJobsInvalid(t *testing.T) {
	s := openTest(t, Options{})
	good := otaJob("ok", "p_d1")
	bad := []OTAJob{
		{},
		func() OTAJob { j := good; j.ID = strings.Repeat("i", MaxOTAJobIDLen+1); return j }(),
		func() OTAJob { j := good; j.DeviceID = "bad id"; return j }(),
		func() OTAJob { j := good; j.State = ""; return j }(),
		func() OTAJob { j := good; j.Offset = -1; return j }(),
		func() OTAJob { j := good; j.URL = strings.Repeat("u", MaxOTAJobBytes); return j }(),
	}
	for i, j := range bad {
		if err := s.PutOTAJobs(testCtx(t), good, j); !errors.Is(err, ErrInvalid) {
			t.Errorf("case %d: err = %v, want ErrInvalid", i, err)
		}
		if err := s.UpdateOTAJobsAsync([]OTAJob{j}, nil, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("case %d async: err = %v, want ErrInvalid", i, err)
		}
	}
	if err := s.DeleteOTAJobs(testCtx(t), ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("delete empty id: %v", err)
	}
	if jobs, err := s.LoadOTAJobs(); err != nil || len(jobs) != 0 {
		t.Fatalf("something was written: %v %v", jobs, err)
	}
}

// TestOTAJobsCorruptRecordSkipped: an undecodable record is reported with
// ErrCorrupt while the good jobs still load.
func TestOTAJobsCorruptRecordSkipped(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutOTAJobs(testCtx(t), otaJob("good", "p_d1")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	rawUpdate(t, dir, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOTAJobs)
		if err := b.Put([]byte("junk"), []byte("{not json")); err != nil {
			return err
		}
		if err := b.Put([]byte("future"), []byte(`{"v":99,"id":"future"}`)); err != nil {
			return err
		}
		return b.Put([]byte("moved"), []byte(`{"v":1,"id":"other","device_id":"p_d1","state":"queued"}`))
	})
	s = openTest(t, Options{Dir: dir, NoSync: true})
	jobs, err := s.LoadOTAJobs()
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "3 OTA job records") {
		t.Fatalf("err = %v", err)
	}
	if len(jobs) != 1 || jobs[0].ID != "good" {
		t.Fatalf("jobs = %+v", jobs)
	}
	if _, _, err := s.OTAJobByID("junk"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("OTAJobByID(junk) = %v", err)
	}
}

// TestOTAJobsClosed: every method fails with ErrClosed after Close.
func TestOTAJobsClosed(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := s.PutOTAJobs(testCtx(t), otaJob("a", "p_d1")); !errors.Is(err, ErrClosed) {
		t.Errorf("put: %v", err)
	}
	if err := s.UpdateOTAJobsAsync([]OTAJob{otaJob("a", "p_d1")}, nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("async: %v", err)
	}
	if _, err := s.LoadOTAJobs(); !errors.Is(err, ErrClosed) {
		t.Errorf("load: %v", err)
	}
}
