package frame

import (
	"bytes"
	"unicode/utf8"

	"github.com/subgate/subgate/subdevice"
)

// demoCodec speaks the text protocol of Huawei's demo TCP devices
// (iotda-protocol §6.1): up, "<device_id>|<content>" with no delimiter, one
// message per write, or newline-terminated lines from tools like nc; down,
// one line of UTF-8 text per frame.
//
// The two directions differ: Decode reads what a device sends and
// AppendEncode writes what the gateway sends, so demo has no round trip.
type demoCodec struct{ max int }

// Demo returns the demo codec with the default frame size limit.
func Demo() Codec { return NewDemo(0) }

// NewDemo returns the demo codec with a limit of maxFrame bytes per message,
// line terminator included (0 or less means DefaultMaxFrame).
func NewDemo(maxFrame int) Codec { return demoCodec{max: limitOrDefault(maxFrame)} }

func (demoCodec) Name() string { return NameDemo }

func (demoCodec) Native() bool { return false }

// Decode returns the first message of buf as a TypeMessage frame whose NodeID
// is what the device sent as its id and whose Content is the rest (aliasing
// buf). A message ends at '\n' (a '\r' before it is dropped) or, when atEOF,
// at the end of buf: the demo device does not delimit its messages, so each
// read is one message.
func (c demoCodec) Decode(buf []byte, atEOF bool) (Frame, int, error) {
	line, n := cutLine(buf, c.max)
	if n == 0 {
		switch {
		case atEOF && len(buf) > 0 && len(buf) <= c.max:
			line, n = trimCR(buf), len(buf)
		case len(buf) >= c.max:
			return Frame{}, 0, tooLarge(c.max)
		default:
			return Frame{}, 0, ErrIncomplete
		}
	}
	if len(line) == 0 {
		return Frame{}, n, badFrame("empty message")
	}
	if !utf8.Valid(line) {
		return Frame{}, n, badFrame("message is not UTF-8")
	}
	i := bytes.IndexByte(line, '|')
	switch {
	case i < 0:
		return Frame{}, n, badFrame("expected <device_id>|<content>")
	case i == 0:
		return Frame{}, n, badFrame("empty device id")
	case i > subdevice.MaxDeviceIDLen:
		return Frame{}, n, badFrame("device id too long")
	}
	return Frame{Type: TypeMessage, NodeID: string(line[:i]), Content: line[i+1:]}, n, nil
}

// AppendEncode appends f as one line of text for a demo device (the demo
// device prints whatever it reads; the newline helps nc users). Frames with
// nothing to show (ack, ping, pong, challenge) append nothing; frames a demo
// device cannot take part in (OTA, shadow, device answers) fail with
// ErrCannotCarry.
func (c demoCodec) AppendEncode(dst []byte, f Frame) ([]byte, error) {
	switch f.Type {
	case TypeAck, TypePing, TypePong, TypeChallenge:
		return dst, nil
	case TypeMessage, TypeError, TypeWelcome, TypeCommand, TypePropertySet, TypePropertyGet, TypeEvent:
	default:
		return dst, cannotCarry(f.Type, "not expressible in the demo protocol")
	}
	if err := validate(&f); err != nil {
		return dst, cannotCarry(f.Type, err.Reason)
	}
	start := len(dst)
	switch f.Type {
	case TypeMessage:
		if !utf8.Valid(f.Content) {
			return dst, cannotCarry(f.Type, "content is not UTF-8")
		}
		dst = append(dst, f.Content...)
	case TypeError:
		dst = append(dst, "error: "...)
		if f.Reason != "" {
			dst = append(dst, f.Reason...)
		} else {
			dst = append(dst, f.Code.String()...)
		}
	case TypeWelcome:
		dst = append(dst, "sub device: "...)
		dst = append(dst, f.DeviceID...)
		dst = append(dst, " go online"...)
	case TypeCommand:
		dst = append(dst, `{"service_id":`...)
		dst = appendJSONText(dst, f.ServiceID)
		dst = append(dst, `,"command_name":`...)
		dst = appendJSONText(dst, f.CommandName)
		dst = append(dst, `,"paras":`...)
		dst = appendRawOr(dst, f.Paras, "{}")
		dst = append(dst, `,"request_id":`...)
		dst = appendJSONText(dst, f.RequestID)
		dst = append(dst, '}')
	case TypePropertySet:
		dst = append(dst, `{"request_id":`...)
		dst = appendJSONText(dst, f.RequestID)
		dst = append(dst, `,"services":`...)
		dst = appendRawOr(dst, f.Services, "[]")
		dst = append(dst, '}')
	case TypePropertyGet:
		dst = append(dst, `{"request_id":`...)
		dst = appendJSONText(dst, f.RequestID)
		if f.ServiceID != "" {
			dst = append(dst, `,"service_id":`...)
			dst = appendJSONText(dst, f.ServiceID)
		}
		dst = append(dst, '}')
	case TypeEvent:
		dst = append(dst, `{"service_id":`...)
		dst = appendJSONText(dst, f.ServiceID)
		dst = append(dst, `,"event_type":`...)
		dst = appendJSONText(dst, f.EventType)
		dst = append(dst, `,"paras":`...)
		dst = appendRawOr(dst, f.Paras, "{}")
		dst = append(dst, '}')
	}
	dst = append(dst, '\n')
	return finishEncode(dst, start, c.max, f.Type)
}

// appendRawOr appends raw JSON, compacted onto one line, or def when raw is
// empty. raw has passed validate, so compaction cannot fail.
func appendRawOr(dst, raw []byte, def string) []byte {
	if len(raw) == 0 {
		return append(dst, def...)
	}
	return appendRawJSON(dst, raw)
}
