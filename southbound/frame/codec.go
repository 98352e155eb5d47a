package frame

import (
	"bytes"
	"errors"
	"fmt"
)

// DefaultMaxFrame is the frame size limit used when a constructor gets 0:
// 64 KiB, terminator or header included.
const DefaultMaxFrame = 64 << 10

// Codec names accepted by New and ByName.
const (
	NameDemo   = "demo"
	NameJSONL  = "jsonl"
	NameBinary = "binary"
)

// ErrUnknownCodec is returned by New and ByName for a name that is not
// "demo", "jsonl" or "binary".
var ErrUnknownCodec = errors.New("frame: unknown codec name")

// New returns the codec called name with a frame size limit of maxFrame
// bytes (0 or less means DefaultMaxFrame).
func New(name string, maxFrame int) (Codec, error) {
	switch name {
	case NameDemo:
		return NewDemo(maxFrame), nil
	case NameJSONL:
		return NewJSONL(maxFrame), nil
	case NameBinary:
		return NewBinary(maxFrame), nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownCodec, name)
}

// ByName returns the codec called name with the default frame size limit.
func ByName(name string) (Codec, error) { return New(name, 0) }

func limitOrDefault(maxFrame int) int {
	if maxFrame <= 0 {
		return DefaultMaxFrame
	}
	return maxFrame
}

func tooLarge(limit int) *Error {
	return Errorf(CodeTooLarge, true, "frame above the %d-byte limit", limit)
}

func badFrame(reason string) *Error {
	return &Error{Code: CodeBadFrame, Reason: reason}
}

// cutLine returns the first line of buf without its "\n" or "\r\n"
// terminator, and the bytes it used including the terminator. n is 0 when the
// first limit bytes of buf hold no '\n': a line, terminator included, is at
// most limit bytes long.
func cutLine(buf []byte, limit int) (line []byte, n int) {
	i := bytes.IndexByte(buf[:min(len(buf), limit)], '\n')
	if i < 0 {
		return nil, 0
	}
	return trimCR(buf[:i]), i + 1
}

func trimCR(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] == '\r' {
		return b[:len(b)-1]
	}
	return b
}

// finishEncode enforces the frame size limit on the encoding appended to dst
// since start: a frame the peer would reject as too large is not written.
func finishEncode(dst []byte, start, limit int, t Type) ([]byte, error) {
	if n := len(dst) - start; n > limit {
		return dst[:start], fmt.Errorf("%w: %s frame of %d bytes above the %d-byte limit", ErrCannotCarry, t, n, limit)
	}
	return dst, nil
}

func cannotCarry(t Type, reason string) error {
	return fmt.Errorf("%w: %s: %s", ErrCannotCarry, t, reason)
}
