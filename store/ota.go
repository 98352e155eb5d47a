package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/subgate/subgate/subdevice"
)

// bucketOTAJobs maps an OTA job id to an encoded OTAJob. It is created on
// first use, in files of any schema version 1 (older builds ignore an
// unknown bucket), so adding it needs no schema bump.
var bucketOTAJobs = []byte("ota_jobs")

// otaJobVersion is the encoding version of an OTAJob record.
const otaJobVersion = 1

// Bounds of OTA job fields. They guard the file against misuse; real values
// are far smaller.
const (
	// MaxOTAJobIDLen bounds OTAJob.ID.
	MaxOTAJobIDLen = 128
	// MaxOTAJobBytes bounds one encoded job record (URLs and tokens are
	// the large fields).
	MaxOTAJobBytes = 64 << 10
)

// OTAJob is the durable state of one sub-device upgrade (iotda-protocol
// §4.2, §4.6). The store does not interpret State or the result fields; the
// gateway owns their meaning.
type OTAJob struct {
	ID        string `json:"id"`
	DeviceID  string `json:"device_id"`
	EventType string `json:"event_type"`
	TaskID    string `json:"task_id,omitempty"`
	// Package, as announced by the platform. Sign is the lower-case
	// SHA-256 hex; for a _v2 event without one it is filled in from the
	// downloaded bytes.
	Version     string    `json:"version"`
	URL         string    `json:"url"`
	AccessToken string    `json:"access_token,omitempty"`
	TokenExpiry time.Time `json:"token_expiry,omitzero"`
	FileName    string    `json:"file_name,omitempty"`
	FileSize    int64     `json:"file_size,omitempty"`
	Sign        string    `json:"sign,omitempty"`
	// Progress and outcome.
	State       string    `json:"state"`
	Offset      int64     `json:"offset,omitempty"`
	Attempts    int       `json:"attempts,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	ResultCode  int       `json:"result_code,omitempty"`
	Description string    `json:"description,omitempty"`
	// Reported is set once the final upgrade_progress_report of a finished
	// job was acknowledged by the platform.
	Reported bool      `json:"reported,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// otaRecord is the stored form: the job with an encoding version.
type otaRecord struct {
	V int `json:"v"`
	OTAJob
}

func checkOTAJob(j *OTAJob) error {
	if j.ID == "" || len(j.ID) > MaxOTAJobIDLen {
		return fmt.Errorf("%w: OTA job id of %d bytes (1-%d)", ErrInvalid, len(j.ID), MaxOTAJobIDLen)
	}
	if err := subdevice.ValidateDeviceID(j.DeviceID); err != nil {
		return fmt.Errorf("%w: OTA job %q: %w", ErrInvalid, j.ID, err)
	}
	if j.State == "" {
		return fmt.Errorf("%w: OTA job %q has no state", ErrInvalid, j.ID)
	}
	if j.FileSize < 0 || j.Offset < 0 || j.Attempts < 0 {
		return fmt.Errorf("%w: OTA job %q has a negative size, offset or attempt count", ErrInvalid, j.ID)
	}
	return nil
}

func encodeOTAJob(j *OTAJob) ([]byte, error) {
	if err := checkOTAJob(j); err != nil {
		return nil, err
	}
	b, err := json.Marshal(otaRecord{V: otaJobVersion, OTAJob: *j})
	if err != nil {
		return nil, fmt.Errorf("%w: OTA job %q: %v", ErrInvalid, j.ID, err)
	}
	if len(b) > MaxOTAJobBytes {
		return nil, fmt.Errorf("%w: OTA job %q encodes to %d bytes, limit %d", ErrInvalid, j.ID, len(b), MaxOTAJobBytes)
	}
	return b, nil
}

func decodeOTAJob(k, v []byte) (OTAJob, error) {
	var r otaRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return OTAJob{}, fmt.Errorf("%w: OTA job %q: %v", ErrCorrupt, k, err)
	}
	if r.V != otaJobVersion {
		return OTAJob{}, fmt.Errorf("%w: OTA job %q has encoding version %d, want %d", ErrCorrupt, k, r.V, otaJobVersion)
	}
	if r.ID != string(k) {
		return OTAJob{}, fmt.Errorf("%w: OTA job under key %q names id %q", ErrCorrupt, k, r.ID)
	}
	if err := checkOTAJob(&r.OTAJob); err != nil {
		return OTAJob{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return r.OTAJob, nil
}

// ensureOTABucket creates the jobs bucket in a file that predates it. The
// check is a read transaction; the creation, once per file, is one short
// Update beside the writer (bbolt serialises writers).
func (s *Store) ensureOTABucket() error {
	exists := false
	if err := s.view(func(tx *bbolt.Tx) error {
		exists = tx.Bucket(bucketOTAJobs) != nil
		return nil
	}); err != nil {
		return err
	}
	if exists {
		return nil
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketOTAJobs)
		return err
	})
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	if err != nil {
		return fmt.Errorf("store: create bucket %q: %w", bucketOTAJobs, err)
	}
	return nil
}

func (s *Store) otaWrites(jobs []OTAJob, del []string) ([]kvWrite, error) {
	writes := make([]kvWrite, 0, len(jobs)+len(del))
	for _, id := range del {
		if id == "" || len(id) > MaxOTAJobIDLen {
			return nil, fmt.Errorf("%w: OTA job id %q to delete", ErrInvalid, id)
		}
		writes = append(writes, kvWrite{bucket: bucketOTAJobs, key: []byte(id)})
	}
	for i := range jobs {
		rec, err := encodeOTAJob(&jobs[i])
		if err != nil {
			return nil, err
		}
		writes = append(writes, kvWrite{bucket: bucketOTAJobs, key: []byte(jobs[i].ID), val: rec})
	}
	if err := s.ensureOTABucket(); err != nil {
		return nil, err
	}
	return writes, nil
}

// PutOTAJobs inserts or replaces jobs in one transaction and returns after
// the commit. A bad job fails the call with ErrInvalid and nothing is
// written.
func (s *Store) PutOTAJobs(ctx context.Context, jobs ...OTAJob) error {
	writes, err := s.otaWrites(jobs, nil)
	if err != nil || len(writes) == 0 {
		return err
	}
	return s.do(ctx, &request{op: opWrite, writes: writes})
}

// UpdateOTAJobsAsync writes jobs and deletes the jobs named in del, in one
// transaction, without waiting. It returns ErrBusy at once when the write
// queue is full, and ErrInvalid, ErrClosed as PutOTAJobs. When it returns
// nil, done (which may be nil) is called exactly once on the writer
// goroutine after the commit, with the commit's error; it must not block
// nor call methods that wait for a commit. Writes queued earlier commit
// first, so the last write of a job wins.
func (s *Store) UpdateOTAJobsAsync(jobs []OTAJob, del []string, done func(error)) error {
	writes, err := s.otaWrites(jobs, del)
	if err != nil {
		return err
	}
	if len(writes) == 0 {
		if done != nil {
			done(nil)
		}
		return nil
	}
	r := &request{op: opWrite, writes: writes}
	r.cb = func(uint64, error) {}
	if done != nil {
		r.cb = func(_ uint64, err error) { done(err) }
	}
	return s.submit(r)
}

// DeleteOTAJobs removes the jobs named in ids (absent ones are ignored) and
// returns after the commit.
func (s *Store) DeleteOTAJobs(ctx context.Context, ids ...string) error {
	writes, err := s.otaWrites(nil, ids)
	if err != nil || len(writes) == 0 {
		return err
	}
	return s.do(ctx, &request{op: opWrite, writes: writes})
}

// LoadOTAJobs returns every stored OTA job in id order. Records that cannot
// be decoded are left out and reported in err, which then wraps ErrCorrupt
// and names how many were skipped: the good jobs are still returned, so one
// damaged record does not stop the upgrades of every other device.
func (s *Store) LoadOTAJobs() ([]OTAJob, error) {
	var jobs []OTAJob
	var bad []string
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOTAJobs)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			j, err := decodeOTAJob(k, v)
			if err != nil {
				bad = append(bad, string(bytes.Clone(k)))
				return nil
			}
			jobs = append(jobs, j)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		return jobs, fmt.Errorf("%w: %d OTA job records skipped (first %q)", ErrCorrupt, len(bad), bad[0])
	}
	return jobs, nil
}

// OTAJobByID returns the stored job with id and whether there is one.
func (s *Store) OTAJobByID(id string) (OTAJob, bool, error) {
	var j OTAJob
	found := false
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketOTAJobs)
		if b == nil {
			return nil
		}
		v := b.Get([]byte(id))
		if v == nil {
			return nil
		}
		var err error
		j, err = decodeOTAJob([]byte(id), v)
		found = err == nil
		return err
	})
	return j, found, err
}
