package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

// dlTask is one package download, shared by every job that needs the
// package (singleflight by key).
type dlTask struct {
	key    string
	url    string
	token  string    // Bearer access_token (v1), "" for none
	expiry time.Time // the token's end (iotda §4.2 expires), zero for none
	size   int64     // file_size, 0 when not announced (_v2)
	sign   string    // expected SHA-256 hex (lower case), "" when not announced
}

// dlResult is the outcome of a dlTask.
type dlResult struct {
	key    string
	sign   string // SHA-256 of the package (on success)
	size   int64
	cached bool // served from the cache without a transfer
	err    error
	// code is the iotda §4.5 result code for a failure; permanent means a
	// retry cannot succeed (sign or size mismatch, refused token).
	code      int
	permanent bool
}

// dlError is a failed download with its result code.
type dlError struct {
	code      int
	permanent bool
	msg       string
}

func (e *dlError) Error() string { return e.msg }

func dlErrf(code int, permanent bool, format string, args ...any) *dlError {
	return &dlError{code: code, permanent: permanent, msg: fmt.Sprintf(format, args...)}
}

// otaDownloader fetches packages over HTTPS into the cache. Its methods run
// on the download worker goroutines.
type otaDownloader struct {
	client   *http.Client
	cache    *otaCache
	timeout  time.Duration
	attempts int
	now      func() time.Time
	count    func(n int64)
}

// newOTAHTTPClient verifies package servers with the system roots plus the
// PEM certificates of caFile (iotda §4.3: the SDK samples skip the check;
// we do not). Redirects are followed only to https URLs.
func newOTAHTTPClient(caFile string, workers int) (*http.Client, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ota.ca_file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ota.ca_file: no PEM certificate in %s", caFile)
		}
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		TLSClientConfig:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		MaxIdleConnsPerHost:   workers,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" {
				return fmt.Errorf("redirect to a non-https URL refused")
			}
			if len(via) >= 5 {
				return fmt.Errorf("more than 5 redirects")
			}
			return nil
		},
	}, nil
}

// fetch makes the package of t available in the cache: it verifies a copy
// found on disk at start, or downloads it (resuming a partial file with
// HTTP Range), checks file_size and sign (iotda §4.4) and commits it.
func (d *otaDownloader) fetch(ctx context.Context, t dlTask) dlResult {
	res := dlResult{key: t.key}
	if t.sign != "" {
		cached, verified := d.cache.state(t.sign)
		if cached && (verified || d.cache.verify(t.sign) == nil) {
			res.sign, res.cached = t.sign, true
			return res
		}
	}
	if !t.expiry.IsZero() && d.now().After(t.expiry) {
		return failed(res, dlErrf(iotda.OTAInternalError, true,
			"the package URL's access token expired at %s (iotda expires) before the download", t.expiry.UTC().Format(time.RFC3339)))
	}
	if t.size > 0 {
		if err := d.cache.reserve(t.key, t.size); err != nil {
			return failed(res, dlErrf(iotda.OTAInternalError, t.size > d.cache.max, "%v", err))
		}
	}
	dctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	var err error
	for range d.attempts {
		var sign string
		var size int64
		sign, size, err = d.try(dctx, t)
		if err == nil {
			res.sign, res.size = sign, size
			return res
		}
		var de *dlError
		if errors.As(err, &de) && de.permanent || dctx.Err() != nil {
			break
		}
	}
	switch {
	case ctx.Err() != nil:
		d.cache.release(t.key, false)
		return failed(res, ctx.Err())
	case errors.Is(dctx.Err(), context.DeadlineExceeded):
		d.cache.release(t.key, false)
		return failed(res, dlErrf(iotda.OTADownloadTimeout, false, "download not finished within ota.download_timeout (%s): %v", d.timeout, err))
	}
	var de *dlError
	if errors.As(err, &de) && de.permanent {
		d.cache.release(t.key, true)
	} else {
		d.cache.release(t.key, false)
	}
	return failed(res, err)
}

func failed(res dlResult, err error) dlResult {
	res.err = err
	res.code = iotda.OTAInternalError
	var de *dlError
	if errors.As(err, &de) {
		res.code, res.permanent = de.code, de.permanent
	}
	return res
}

// try is one HTTP request: it continues the partial file when there is
// one, and returns the package's SHA-256 and size once it is complete.
func (d *otaDownloader) try(ctx context.Context, t dlTask) (string, int64, error) {
	part := d.cache.partPath(t.key)
	f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", 0, dlErrf(iotda.OTAInternalError, false, "OTA cache: %v", err)
	}
	defer f.Close()
	// Rebuild the hash over what a previous try left.
	h := sha256.New()
	have, err := io.Copy(h, f)
	if err != nil {
		return "", 0, dlErrf(iotda.OTAInternalError, false, "OTA cache: %v", err)
	}
	if t.size > 0 && have > t.size {
		if have, err = restart(f, h); err != nil {
			return "", 0, err
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url, nil)
	if err != nil {
		return "", 0, dlErrf(iotda.OTAInternalError, true, "bad package url: %v", err)
	}
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return "", 0, dlErrf(iotda.OTAInternalError, false, "package download: %v", redactURL(err, t.url))
	}
	defer resp.Body.Close()
	total := t.size
	switch {
	case resp.StatusCode == http.StatusOK:
		if have > 0 {
			if have, err = restart(f, h); err != nil {
				return "", 0, err
			}
		}
		if resp.ContentLength >= 0 {
			if t.size > 0 && resp.ContentLength != t.size {
				return "", 0, dlErrf(iotda.OTAVerifyFailed, true,
					"package server sends %d bytes but file_size is %d", resp.ContentLength, t.size)
			}
			total = resp.ContentLength
		}
	case resp.StatusCode == http.StatusPartialContent:
		start, end, size, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != have || end+1 != size || (t.size > 0 && size != t.size) {
			_, _ = restart(f, h)
			return "", 0, dlErrf(iotda.OTAInternalError, false, "package server answered Range %d- with %q",
				have, resp.Header.Get("Content-Range"))
		}
		total = size
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		_, _ = restart(f, h)
		return "", 0, dlErrf(iotda.OTAInternalError, false, "package server refused to resume at %d", have)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return "", 0, dlErrf(iotda.OTAInternalError, true,
			"package server refused the access token (HTTP %d): expired or wrong", resp.StatusCode)
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return "", 0, dlErrf(iotda.OTAInternalError, true, "package not found on the server (HTTP %d)", resp.StatusCode)
	default:
		return "", 0, dlErrf(iotda.OTAInternalError, false, "package server answered HTTP %d", resp.StatusCode)
	}
	if total <= 0 {
		return "", 0, dlErrf(iotda.OTAInternalError, true, "package size unknown: no file_size and no Content-Length")
	}
	if t.size <= 0 {
		if err := d.cache.reserve(t.key, total); err != nil {
			return "", 0, dlErrf(iotda.OTAInternalError, total > d.cache.max, "%v", err)
		}
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return "", 0, dlErrf(iotda.OTAInternalError, false, "OTA cache: %v", err)
	}
	// Read one byte more than expected to detect a longer package.
	n, err := io.Copy(io.MultiWriter(f, h), countingReader{r: io.LimitReader(resp.Body, total-have+1), count: d.count})
	have += n
	if have > total {
		_, _ = restart(f, h)
		return "", 0, dlErrf(iotda.OTAVerifyFailed, true, "package is larger than its %d bytes", total)
	}
	if err != nil || have < total {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return "", 0, dlErrf(iotda.OTAInternalError, false, "package download interrupted at %d of %d bytes: %v", have, total, err)
	}
	if err := f.Sync(); err != nil {
		return "", 0, dlErrf(iotda.OTAInternalError, false, "OTA cache: %v", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if t.sign != "" && sum != t.sign {
		_, _ = restart(f, h)
		return "", 0, dlErrf(iotda.OTAVerifyFailed, true, "package SHA-256 %s does not match sign %s", sum, t.sign)
	}
	if err := d.cache.commit(t.key, sum, total); err != nil {
		return "", 0, dlErrf(iotda.OTAInternalError, false, "%v", err)
	}
	return sum, total, nil
}

// restart empties the partial file and the hash.
func restart(f *os.File, h hash.Hash) (int64, error) {
	h.Reset()
	if err := f.Truncate(0); err != nil {
		return 0, dlErrf(iotda.OTAInternalError, false, "OTA cache: %v", err)
	}
	return 0, nil
}

// parseContentRange parses "bytes start-end/size".
func parseContentRange(v string) (start, end, size int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, sz, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	start, err1 = strconv.ParseInt(a, 10, 64)
	end, err2 = strconv.ParseInt(b, 10, 64)
	size, err3 = strconv.ParseInt(sz, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || start < 0 || end < start || size <= end {
		return 0, 0, 0, false
	}
	return start, end, size, true
}

// redactURL keeps the query string (pre-signed OBS URLs carry credentials
// there) out of error texts that reach logs and the platform.
func redactURL(err error, raw string) string {
	s := err.Error()
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		s = strings.ReplaceAll(s, raw, raw[:i]+"?<redacted>")
	}
	return s
}

type countingReader struct {
	r     io.Reader
	count func(int64)
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 && c.count != nil {
		c.count(int64(n))
	}
	return n, err
}
