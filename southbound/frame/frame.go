// Package frame is subgate's device-side message model and its encodings
// (codecs). It is pure: no sockets, no gnet, no goroutines, so every decoder
// is fuzzed and benchmarked alone.
//
// One model, several encodings: a Frame means the same thing whether it came
// as a demo text line, a JSON line or a binary frame. A Codec turns bytes into
// Frames and back. Decoders never panic and never read past the input; they
// return ErrIncomplete when more bytes are needed and a *Error for input that
// is wrong. The wire formats are specified in docs/device-protocol.md.
package frame

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Version is the version of the native protocol (jsonl and binary) described
// in docs/device-protocol.md.
const Version = 1

// Type says what a frame is. Up means device to gateway, down the reverse.
type Type uint8

// Frame types. The numeric values are wire values of the binary codec: never
// renumber them.
const (
	TypeInvalid Type = 0
	// TypeHello (up) opens a session: NodeID, optional ProductID, FwVersion,
	// SwVersion, and Proof when the gateway asked for a token proof.
	TypeHello Type = 1
	// TypeChallenge (down) carries the Nonce a token-authenticated device
	// must sign in its hello.
	TypeChallenge Type = 2
	// TypeWelcome (down) accepts a hello: DeviceID is the platform id.
	TypeWelcome Type = 3
	// TypeMessage (up and down) is a free-form message: Name, Content.
	TypeMessage Type = 4
	// TypeProperties (up) reports properties: Services.
	TypeProperties Type = 5
	// TypeEvent (up and down) is a device event: ServiceID, EventType, Paras.
	TypeEvent Type = 6
	// TypeCommand (down) is a platform command: RequestID, ServiceID,
	// CommandName, Paras.
	TypeCommand Type = 7
	// TypeCommandResponse (up) answers a command: RequestID, ResultCode,
	// ResponseName, Paras.
	TypeCommandResponse Type = 8
	// TypePropertySet (down): RequestID, Services.
	TypePropertySet Type = 9
	// TypePropertySetResponse (up): RequestID, ResultCode, ResultDesc.
	TypePropertySetResponse Type = 10
	// TypePropertyGet (down): RequestID, ServiceID (empty for all).
	TypePropertyGet Type = 11
	// TypePropertyGetResponse (up): RequestID, Services.
	TypePropertyGetResponse Type = 12
	// TypeShadowGet (up) asks for the device's shadow: RequestID, ServiceID.
	TypeShadowGet Type = 13
	// TypeShadow (down) answers a shadow get: RequestID, Paras (the shadow
	// array as the platform sent it).
	TypeShadow Type = 14
	// TypeAck (down) says the up frame with Seq is durable at the gateway.
	TypeAck Type = 15
	// TypeError (down) reports a problem: Code, Reason, and Seq or RequestID
	// of the frame it concerns when there is one.
	TypeError Type = 16
	// TypePing and TypePong keep an idle link alive (either direction).
	TypePing Type = 17
	TypePong Type = 18
	// TypeOTAOffer (down) offers a package: RequestID (job id), Version,
	// Size, Sign (SHA-256 hex).
	TypeOTAOffer Type = 19
	// TypeOTAChunk (down): RequestID, Offset, Content (raw bytes).
	TypeOTAChunk Type = 20
	// TypeOTAAck (up) acknowledges everything below Offset, or refuses with a
	// non-zero ResultCode.
	TypeOTAAck Type = 21
	// TypeOTAResult (up) ends an upgrade: RequestID, ResultCode (iotda §4.5
	// codes), Version (the new version), ResultDesc.
	TypeOTAResult Type = 22

	typeMax = TypeOTAResult
)

var typeNames = [...]string{
	TypeInvalid:             "invalid",
	TypeHello:               "hello",
	TypeChallenge:           "challenge",
	TypeWelcome:             "welcome",
	TypeMessage:             "message",
	TypeProperties:          "properties",
	TypeEvent:               "event",
	TypeCommand:             "command",
	TypeCommandResponse:     "command_response",
	TypePropertySet:         "property_set",
	TypePropertySetResponse: "property_set_response",
	TypePropertyGet:         "property_get",
	TypePropertyGetResponse: "property_get_response",
	TypeShadowGet:           "shadow_get",
	TypeShadow:              "shadow",
	TypeAck:                 "ack",
	TypeError:               "error",
	TypePing:                "ping",
	TypePong:                "pong",
	TypeOTAOffer:            "ota_offer",
	TypeOTAChunk:            "ota_chunk",
	TypeOTAAck:              "ota_ack",
	TypeOTAResult:           "ota_result",
}

// String returns the jsonl name of t ("hello", "command_response", ...).
func (t Type) String() string {
	if t <= typeMax {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// ParseType returns the Type whose jsonl name is s.
func ParseType(s string) (Type, bool) {
	for i := TypeHello; i <= typeMax; i++ {
		if typeNames[i] == s {
			return i, true
		}
	}
	return TypeInvalid, false
}

// Types returns every valid type, for tables in tests and metrics.
func Types() []Type {
	out := make([]Type, 0, typeMax)
	for i := TypeHello; i <= typeMax; i++ {
		out = append(out, i)
	}
	return out
}

// Frame is one device-side message. Which fields are meaningful depends on
// Type (see the constants); the rest stay zero. Slices in a decoded Frame may
// alias the decoder's input: copy them (Clone) before the input is reused.
type Frame struct {
	Type Type
	// Seq is chosen by the sender. On an up data frame (message, properties,
	// event) a non-zero Seq asks for a TypeAck once the frame is durable.
	// Ack and Error frames echo it.
	Seq uint32

	// Hello fields.
	NodeID    string
	ProductID string
	FwVersion string
	SwVersion string
	// Proof is hex(HMAC-SHA256(key=device secret, msg=nonce || node id)).
	Proof string
	// Nonce is the challenge (down), raw bytes.
	Nonce []byte
	// DeviceID is the platform device id (welcome).
	DeviceID string

	// Request correlation: the platform's request id, or the device's own
	// for a shadow get, or the OTA job id.
	RequestID string

	ServiceID    string // event, property get, shadow get
	EventType    string // event
	CommandName  string // command
	ResponseName string // command response
	Name         string // message name (optional)

	ResultCode int32  // responses, OTA ack/result; 0 is success
	ResultDesc string // property set response, OTA result

	// Services is a JSON array of {"service_id", "properties", "event_time"}
	// objects (properties, property set, property get response).
	Services json.RawMessage
	// Paras is a JSON object (command, command response, event) or the
	// shadow array (shadow).
	Paras json.RawMessage
	// Content is a message body or an OTA chunk: any bytes (binary codec),
	// UTF-8 text (demo, jsonl "content") or base64 (jsonl "content_b64").
	Content []byte

	// Error fields.
	Code   ErrorCode
	Reason string

	// OTA fields.
	Version string // offer: target version; result: the version now running
	Size    int64  // offer: package size in bytes
	Sign    string // offer: SHA-256 hex of the package
	Offset  int64  // chunk: offset of Content; ack: bytes received so far
}

// Clone returns a deep copy of f whose slices do not alias any buffer.
func (f Frame) Clone() Frame {
	f.Nonce = cloneBytes(f.Nonce)
	f.Services = json.RawMessage(cloneBytes(f.Services))
	f.Paras = json.RawMessage(cloneBytes(f.Paras))
	f.Content = cloneBytes(f.Content)
	return f
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

// ErrorCode is the machine-readable reason in an error frame. The values are
// wire values; the table in docs/device-protocol.md lists them.
type ErrorCode uint16

// Error codes sent to devices.
const (
	CodeNone          ErrorCode = 0
	CodeBadFrame      ErrorCode = 1  // malformed frame or field
	CodeTooLarge      ErrorCode = 2  // frame above the size limit
	CodeUnsupported   ErrorCode = 3  // frame type or version not supported
	CodeNotLoggedIn   ErrorCode = 4  // data before a successful hello
	CodeAuthFailed    ErrorCode = 5  // bad proof, unknown node id, not allowed
	CodeBusy          ErrorCode = 6  // a queue is full: retry later
	CodeRateLimited   ErrorCode = 7  // uplink rate above the per-device limit
	CodeUnknownDevice ErrorCode = 8  // not registered and not registrable
	CodeRefused       ErrorCode = 9  // the platform refused (Reason has its text)
	CodeDuplicate     ErrorCode = 10 // another connection has this node id
	CodeTimeout       ErrorCode = 11 // hello or idle timeout
	CodeKicked        ErrorCode = 12 // disconnected by an operator or a newer login
	CodeDeleted       ErrorCode = 13 // the sub-device was deleted on the platform
	CodeShuttingDown  ErrorCode = 14 // the gateway is stopping
	CodeSlowReader    ErrorCode = 15 // outbound buffer full
	CodeInternal      ErrorCode = 16
	CodeTooManyConns  ErrorCode = 17 // connection limit reached
)

var codeNames = map[ErrorCode]string{
	CodeNone: "none", CodeBadFrame: "bad_frame", CodeTooLarge: "too_large",
	CodeUnsupported: "unsupported", CodeNotLoggedIn: "not_logged_in",
	CodeAuthFailed: "auth_failed", CodeBusy: "busy", CodeRateLimited: "rate_limited",
	CodeUnknownDevice: "unknown_device", CodeRefused: "refused",
	CodeDuplicate: "duplicate", CodeTimeout: "timeout", CodeKicked: "kicked",
	CodeDeleted: "deleted", CodeShuttingDown: "shutting_down",
	CodeSlowReader: "slow_reader", CodeInternal: "internal",
	CodeTooManyConns: "too_many_connections",
}

// String returns the snake_case name of c, used in jsonl and in metrics.
func (c ErrorCode) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// ParseErrorCode returns the code whose name is s.
func ParseErrorCode(s string) (ErrorCode, bool) {
	for c, n := range codeNames {
		if n == s {
			return c, true
		}
	}
	return 0, false
}

// Error is a decoding or protocol error that becomes an error frame. Fatal
// errors (broken framing) mean the connection cannot continue.
type Error struct {
	Code   ErrorCode
	Reason string
	Fatal  bool
}

func (e *Error) Error() string { return "frame: " + e.Code.String() + ": " + e.Reason }

// ErrIncomplete means the input holds no whole frame yet: read more.
var ErrIncomplete = errors.New("frame: incomplete")

// Errorf returns a *Error with a formatted reason.
func Errorf(code ErrorCode, fatal bool, format string, args ...any) *Error {
	return &Error{Code: code, Reason: fmt.Sprintf(format, args...), Fatal: fatal}
}

// Codec encodes and decodes frames of one wire format. A Codec holds no
// per-connection state and is safe for concurrent use.
type Codec interface {
	// Name is the config name: "demo", "jsonl" or "binary".
	Name() string
	// Decode decodes the first frame in buf and returns it with the number
	// of bytes it used. It returns ErrIncomplete (n == 0) when buf holds no
	// whole frame, or a *Error with n > 0 bytes to skip (n == 0 and Fatal
	// when the stream cannot be resynchronised). The Frame may alias buf.
	// atEOF says no more bytes will follow the current read (the demo codec
	// uses it to end a message that has no newline).
	Decode(buf []byte, atEOF bool) (f Frame, n int, err error)
	// AppendEncode appends the encoding of f to dst. It fails only for a
	// frame that the format cannot carry (e.g. an OTA chunk in demo).
	AppendEncode(dst []byte, f Frame) ([]byte, error)
	// Native reports whether the format carries the device's own answers
	// (responses, acks); demo does not.
	Native() bool
}

// ErrCannotCarry is returned by AppendEncode for a frame the format cannot
// express.
var ErrCannotCarry = errors.New("frame: the codec cannot carry this frame")
