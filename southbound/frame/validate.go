package frame

import (
	"encoding/json"
	"strings"
	"unicode/utf8"
)

// validate checks the rules shared by every codec: the shapes of the JSON
// fields and the fields each type requires (docs/device-protocol.md §3,
// the bold fields). Decoders call it on what they decoded and encoders on
// what they are asked to write, so a frame that encodes always decodes.
func validate(f *Frame) *Error {
	if len(f.Services) > 0 && !isJSON(f.Services, '[') {
		return badFrame("services must be a JSON array")
	}
	if len(f.Paras) > 0 {
		if f.Type == TypeShadow {
			if !isJSON(f.Paras, '[') && !isJSON(f.Paras, '{') {
				return badFrame("paras must be a JSON array or object")
			}
		} else if !isJSON(f.Paras, '{') {
			return badFrame("paras must be a JSON object")
		}
	}
	if f.Size < 0 {
		return badFrame("size must not be negative")
	}
	if f.Offset < 0 {
		return badFrame("offset must not be negative")
	}
	if missing := missingField(f); missing != "" {
		return &Error{Code: CodeBadFrame, Reason: f.Type.String() + " needs " + missing}
	}
	return nil
}

// missingField returns the name of the first required field of f that is
// empty, or "".
func missingField(f *Frame) string {
	switch f.Type {
	case TypeHello:
		if f.NodeID == "" {
			return "node_id"
		}
	case TypeChallenge:
		if len(f.Nonce) == 0 {
			return "nonce"
		}
	case TypeWelcome:
		if f.DeviceID == "" {
			return "device_id"
		}
	case TypeProperties:
		if len(f.Services) == 0 {
			return "services"
		}
	case TypeEvent:
		if f.ServiceID == "" {
			return "service_id"
		}
		if f.EventType == "" {
			return "event_type"
		}
	case TypeCommand, TypeCommandResponse, TypePropertySetResponse, TypePropertyGet,
		TypeShadowGet, TypeShadow, TypeOTAAck, TypeOTAResult:
		if f.RequestID == "" {
			return "request_id"
		}
	case TypePropertySet, TypePropertyGetResponse:
		if f.RequestID == "" {
			return "request_id"
		}
		if len(f.Services) == 0 {
			return "services"
		}
	case TypeAck:
		if f.Seq == 0 {
			return "seq"
		}
	case TypeError:
		if f.Code == CodeNone {
			return "code"
		}
	case TypeOTAOffer:
		switch {
		case f.RequestID == "":
			return "request_id"
		case f.Version == "":
			return "version"
		case f.Size <= 0:
			return "size"
		case f.Sign == "":
			return "sign"
		}
	case TypeOTAChunk:
		if f.RequestID == "" {
			return "request_id"
		}
		if len(f.Content) == 0 {
			return "content"
		}
	}
	return ""
}

// isJSON reports whether b is one valid JSON value that starts with open
// ('[' or '{') and has no surrounding white space, the form in which
// encoding/json hands out a json.RawMessage.
func isJSON(b []byte, open byte) bool {
	if len(b) < 2 || b[0] != open {
		return false
	}
	switch last := b[len(b)-1]; {
	case open == '[' && last != ']', open == '{' && last != '}':
		return false
	}
	return json.Valid(b)
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 in a string
// becomes U+FFFD, as encoding/json does; byte slices are only passed here
// after utf8.Valid.
func appendJSONString[S string | []byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			const hexDigits = "0123456789abcdef"
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendJSONText appends a Go string as a JSON string, replacing invalid
// UTF-8 first (a rare path that allocates).
func appendJSONText(dst []byte, s string) []byte {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return appendJSONString(dst, s)
}
