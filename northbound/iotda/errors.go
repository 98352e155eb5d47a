package iotda

import "errors"

// Errors returned by the parsers and validators. Callers test them with
// errors.Is; the wrapped message says what was wrong.
var (
	// ErrBadClientID reports an MQTT client id that is not
	// {device_id}_0_{signType}_{YYYYMMDDHH} (iotda-protocol §1.2).
	ErrBadClientID = errors.New("iotda: malformed client id")
	// ErrBadTopic reports a topic that is not one of the system topics of
	// iotda-protocol §2.0.
	ErrBadTopic = errors.New("iotda: malformed topic")
	// ErrBadPayload reports a payload that is not the JSON shape its topic
	// or event type requires.
	ErrBadPayload = errors.New("iotda: malformed payload")
	// ErrBadField reports a field whose value breaks a platform rule
	// (identifier syntax, status value, required field missing).
	ErrBadField = errors.New("iotda: invalid field")
	// ErrLimit reports a message that exceeds a platform limit of
	// iotda-protocol §7 (entries per message, sizes).
	ErrLimit = errors.New("iotda: limit exceeded")
)
