package iotda

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/subgate/subgate/subdevice"
)

// Sign types of the client id (iotda-protocol §1.2).
const (
	// SignNoCheck: HMAC-SHA256, the platform does not check the timestamp.
	SignNoCheck = 0
	// SignCheckTimestamp: HMAC-SHA256, the platform first checks that the
	// timestamp matches its own time.
	SignCheckTimestamp = 1
	// SignSM3: HMAC-SM3 on national-crypto instances (SDK-only).
	SignSM3 = 2
)

const (
	timestampLayout = "2006010215"
	eventTimeLayout = "20060102T150405Z"
	// propertyTimeLayout is the millisecond form allowed for property
	// event_time (iotda-protocol §0).
	propertyTimeLayout = "2006-01-02T15:04:05.000Z"
)

// Timestamp returns the CONNECT timestamp for t: UTC as YYYYMMDDHH
// (iotda-protocol §1.2). Compute it once and pass the same value to
// ClientID and Password.
func Timestamp(t time.Time) string {
	return t.UTC().Format(timestampLayout)
}

// ClientID returns {deviceID}_0_{signType}_{ts} (iotda-protocol §1.2).
func ClientID(deviceID string, signType int, ts string) string {
	return deviceID + "_0_" + strconv.Itoa(signType) + "_" + ts
}

// Password returns lowercase hex of HMAC-SHA256 with the timestamp as key
// and the secret as message (iotda-protocol §1.2).
func Password(secret, ts string) string {
	m := hmac.New(sha256.New, []byte(ts))
	m.Write([]byte(secret))
	return hex.EncodeToString(m.Sum(nil))
}

// ParseClientID splits a secret-authentication client id. Device ids may
// contain '_', so the fields are taken from the right. The id type must be
// 0, the sign type 0, 1 or 2, and ts ten digits forming a valid UTC hour.
func ParseClientID(clientID string) (deviceID string, signType int, ts string, err error) {
	rest, ts, ok := cutLast(clientID)
	if !ok {
		return "", 0, "", fmt.Errorf("%w: no timestamp in %q", ErrBadClientID, clip(clientID))
	}
	if _, perr := ParseTimestamp(ts); perr != nil {
		return "", 0, "", fmt.Errorf("%w: %w", ErrBadClientID, perr)
	}
	rest, sign, ok := cutLast(rest)
	if !ok || len(sign) != 1 || sign[0] < '0' || sign[0] > '2' {
		return "", 0, "", fmt.Errorf("%w: sign type must be 0, 1 or 2 in %q", ErrBadClientID, clip(clientID))
	}
	rest, idType, ok := cutLast(rest)
	if !ok || idType != "0" {
		return "", 0, "", fmt.Errorf("%w: id type must be 0 in %q", ErrBadClientID, clip(clientID))
	}
	if verr := subdevice.ValidateDeviceID(rest); verr != nil {
		return "", 0, "", fmt.Errorf("%w: %w", ErrBadClientID, verr)
	}
	return rest, int(sign[0] - '0'), ts, nil
}

// ParseTimestamp parses a CONNECT timestamp (YYYYMMDDHH, UTC).
func ParseTimestamp(ts string) (time.Time, error) {
	if len(ts) != len(timestampLayout) || !allDigits(ts) {
		return time.Time{}, fmt.Errorf("%w: timestamp %q is not YYYYMMDDHH", ErrBadField, clip(ts))
	}
	t, err := time.Parse(timestampLayout, ts)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: timestamp %q: %w", ErrBadField, ts, err)
	}
	return t, nil
}

// EventTime formats t as an event_time: UTC yyyyMMdd'T'HHmmss'Z'
// (iotda-protocol §0).
func EventTime(t time.Time) string {
	return t.UTC().Format(eventTimeLayout)
}

// ParseEventTime parses an event_time in either form the platform accepts
// for properties: yyyyMMdd'T'HHmmss'Z' or yyyy-MM-dd'T'HH:mm:ss.SSS'Z'
// (iotda-protocol §0).
func ParseEventTime(s string) (time.Time, error) {
	if t, err := time.Parse(eventTimeLayout, s); err == nil && len(s) == len(eventTimeLayout) {
		return t, nil
	}
	if t, err := time.Parse(propertyTimeLayout, s); err == nil && len(s) == len(propertyTimeLayout) {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%w: event_time %q", ErrBadField, clip(s))
}

func cutLast(s string) (before, after string, ok bool) {
	i := strings.LastIndexByte(s, '_')
	if i < 0 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// clip bounds user input quoted in error messages.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
