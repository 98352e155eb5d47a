package admin

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// OTA job states, the values of OTAJob.State and of the state filter of
// GET /api/v1/ota/jobs (docs/ota.md).
const (
	// OTAQueued: waiting for its package, its device, a free slot or the
	// end of a retry backoff.
	OTAQueued = "queued"
	// OTADownloading: its package is being downloaded (once for every job
	// that needs it).
	OTADownloading = "downloading"
	// OTATransferring: chunks are being pushed to the device.
	OTATransferring = "transferring"
	// OTAApplying: the device holds every byte; waiting for its result.
	OTAApplying = "applying"
	// OTASucceeded, OTAFailed and OTACanceled are final.
	OTASucceeded = "succeeded"
	OTAFailed    = "failed"
	OTACanceled  = "canceled"
)

// OTAStates lists every job state, in lifecycle order.
var OTAStates = []string{OTAQueued, OTADownloading, OTATransferring, OTAApplying, OTASucceeded, OTAFailed, OTACanceled}

// MaxOTAJobIDLen bounds the {id} of DELETE /api/v1/ota/jobs/{id}.
const MaxOTAJobIDLen = 128

// ErrConflict means the request conflicts with the resource's state, such
// as cancelling a finished OTA job: 409.
var ErrConflict = errors.New("admin: conflict")

// OTAJob is one sub-device upgrade job as the API shows it. The package's
// access token is never shown.
type OTAJob struct {
	ID         string `json:"id"`
	DeviceID   string `json:"device_id"`
	EventType  string `json:"event_type"`
	TaskID     string `json:"task_id,omitempty"`
	Version    string `json:"version"`
	FileName   string `json:"file_name,omitempty"`
	Size       int64  `json:"size"`
	Sign       string `json:"sign,omitempty"`
	State      string `json:"state"`
	Offset     int64  `json:"offset"`
	Attempts   int    `json:"attempts"`
	ResultCode int    `json:"result_code"`
	// Description says why a job failed or what it waits for.
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
}

// OTAJobList is the answer of GET /api/v1/ota/jobs.
type OTAJobList struct {
	Total  int      `json:"total"`
	Offset int      `json:"offset"`
	Limit  int      `json:"limit"`
	Jobs   []OTAJob `json:"jobs"`
}

// otaRoutes registers the OTA job routes on mux; routes calls it.
func (s *Server) otaRoutes(mux *http.ServeMux) {
	s.handle(mux, "GET /api/v1/ota/jobs", 0, s.listOTAJobs)
	s.handle(mux, "DELETE /api/v1/ota/jobs/{id}", 0, s.cancelOTAJob)
}

func (s *Server) listOTAJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state := strings.ToLower(q.Get("state"))
	if state != "" && !slices.Contains(OTAStates, state) {
		writeError(w, http.StatusBadRequest, CodeBadRequest, "state must be one of "+strings.Join(OTAStates, ", "))
		return
	}
	offset, ok := intParam(w, q.Get("offset"), 0, 0, -1, "offset")
	if !ok {
		return
	}
	limit, ok := intParam(w, q.Get("limit"), DefaultPageLimit, 1, s.opts.MaxPageLimit, "limit")
	if !ok {
		return
	}
	jobs, total := s.backend.OTAJobs(state, offset, limit)
	if len(jobs) > limit {
		jobs = jobs[:limit]
	}
	if jobs == nil {
		jobs = []OTAJob{}
	}
	writeJSON(w, http.StatusOK, OTAJobList{Total: total, Offset: offset, Limit: limit, Jobs: jobs})
}

// validOTAJobID accepts 1-MaxOTAJobIDLen characters of [A-Za-z0-9_.-].
func validOTAJobID(id string) bool {
	if id == "" || len(id) > MaxOTAJobIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func (s *Server) cancelOTAJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validOTAJobID(id) {
		writeError(w, http.StatusBadRequest, CodeBadRequest,
			"job id must be 1 to "+strconv.Itoa(MaxOTAJobIDLen)+" characters of A-Z a-z 0-9 _ . -")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.BackendTimeout)
	defer cancel()
	job, err := s.backend.CancelOTAJob(ctx, id)
	if errors.Is(err, ErrConflict) {
		writeError(w, http.StatusConflict, CodeConflict, err.Error())
		return
	}
	if err != nil {
		s.backendError(w, "cancel OTA job", err)
		return
	}
	writeJSON(w, http.StatusOK, job)
}
