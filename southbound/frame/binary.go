package frame

import (
	"encoding/binary"
	"math"
	"strconv"
	"unicode/utf8"
)

// Binary layout (docs/device-protocol.md §9): a fixed header
//
//	offset 0  magic 0xB5
//	offset 1  version (1)
//	offset 2  type
//	offset 3  flags (reserved, 0)
//	offset 4  seq, uint32 big-endian
//	offset 8  body length, uint32 big-endian
//
// then the body: fields as tag (1 byte), value length (uvarint), value.
const (
	// BinaryMagic is the first byte of every binary frame.
	BinaryMagic = 0xB5
	// MaxHeaderLen is the size of the binary header, the bytes needed to
	// learn a frame's length.
	MaxHeaderLen = 12
)

// Field tags of the binary body. Wire values: never renumber.
const (
	tagNodeID       = 1
	tagProductID    = 2
	tagFwVersion    = 3
	tagSwVersion    = 4
	tagProof        = 5
	tagNonce        = 6
	tagDeviceID     = 7
	tagRequestID    = 8
	tagServiceID    = 9
	tagEventType    = 10
	tagCommandName  = 11
	tagResponseName = 12
	tagName         = 13
	tagResultCode   = 14
	tagResultDesc   = 15
	tagServices     = 16
	tagParas        = 17
	tagContent      = 18
	tagCode         = 19
	tagReason       = 20
	tagVersion      = 21
	tagSize         = 22
	tagSign         = 23
	tagOffset       = 24
	tagMax          = tagOffset
)

var tagNames = [...]string{
	tagNodeID: "node_id", tagProductID: "product_id", tagFwVersion: "fw_version",
	tagSwVersion: "sw_version", tagProof: "proof", tagNonce: "nonce",
	tagDeviceID: "device_id", tagRequestID: "request_id", tagServiceID: "service_id",
	tagEventType: "event_type", tagCommandName: "command_name",
	tagResponseName: "response_name", tagName: "name", tagResultCode: "result_code",
	tagResultDesc: "result_desc", tagServices: "services", tagParas: "paras",
	tagContent: "content", tagCode: "code", tagReason: "reason", tagVersion: "version",
	tagSize: "size", tagSign: "sign", tagOffset: "offset",
}

// binaryCodec is the native binary-safe format.
type binaryCodec struct{ max int }

// Binary returns the binary codec with the default frame size limit.
func Binary() Codec { return NewBinary(0) }

// NewBinary returns the binary codec with a limit of maxFrame bytes per
// frame, header included (0 or less means DefaultMaxFrame).
func NewBinary(maxFrame int) Codec { return binaryCodec{max: limitOrDefault(maxFrame)} }

func (binaryCodec) Name() string { return NameBinary }

func (binaryCodec) Native() bool { return true }

// Decode decodes the first frame of buf. A wrong magic or version is fatal
// as soon as its byte arrives, and so is a declared length above the limit as
// soon as the header is complete. A frame with an unknown type, reserved
// flags or a malformed body is skipped whole. Nonce, Services, Paras and
// Content alias buf; string fields are copies.
func (c binaryCodec) Decode(buf []byte, _ bool) (Frame, int, error) {
	if len(buf) == 0 {
		return Frame{}, 0, ErrIncomplete
	}
	if buf[0] != BinaryMagic {
		return Frame{}, 0, &Error{Code: CodeBadFrame, Reason: "bad magic byte", Fatal: true}
	}
	if len(buf) >= 2 && buf[1] != Version {
		return Frame{}, 0, &Error{Code: CodeUnsupported, Reason: "protocol version " + strconv.Itoa(int(buf[1])) + " not supported", Fatal: true}
	}
	if len(buf) < MaxHeaderLen {
		return Frame{}, 0, ErrIncomplete
	}
	bodyLen := uint64(binary.BigEndian.Uint32(buf[8:12]))
	if MaxHeaderLen+bodyLen > uint64(c.max) {
		return Frame{}, 0, tooLarge(c.max)
	}
	n := MaxHeaderLen + int(bodyLen)
	if len(buf) < n {
		return Frame{}, 0, ErrIncomplete
	}
	t := Type(buf[2])
	if buf[3] != 0 {
		return Frame{}, n, &Error{Code: CodeUnsupported, Reason: "reserved flags set"}
	}
	if t == TypeInvalid || t > typeMax {
		return Frame{}, n, &Error{Code: CodeUnsupported, Reason: "unknown type " + strconv.Itoa(int(t))}
	}
	f := Frame{Type: t, Seq: binary.BigEndian.Uint32(buf[4:8])}
	if err := decodeBody(&f, buf[MaxHeaderLen:n]); err != nil {
		return Frame{}, n, err
	}
	if err := validate(&f); err != nil {
		return Frame{}, n, err
	}
	return f, n, nil
}

// decodeBody decodes the fields of body into f. Unknown tags are skipped;
// tag 0 and a repeated known tag are errors.
func decodeBody(f *Frame, body []byte) *Error {
	var seen uint32
	for len(body) > 0 {
		tag := body[0]
		l, k := binary.Uvarint(body[1:])
		if k <= 0 {
			return badFrame("bad field length")
		}
		body = body[1+k:]
		if l > uint64(len(body)) {
			return badFrame("field runs past the body")
		}
		v := body[:l:l]
		body = body[l:]
		if tag == 0 {
			return badFrame("field tag 0 is reserved")
		}
		if tag > tagMax {
			continue // a field of a later protocol revision
		}
		bit := uint32(1) << tag
		if seen&bit != 0 {
			return badFrame("repeated field " + tagNames[tag])
		}
		seen |= bit
		if err := setField(f, tag, v); err != nil {
			return err
		}
	}
	return nil
}

func setField(f *Frame, tag byte, v []byte) *Error {
	switch tag {
	case tagNonce:
		f.Nonce = v
	case tagServices:
		f.Services = v
	case tagParas:
		f.Paras = v
	case tagContent:
		f.Content = v
	case tagResultCode:
		x, ok := varintField(v)
		if !ok || x < math.MinInt32 || x > math.MaxInt32 {
			return badFrame("bad result_code")
		}
		f.ResultCode = int32(x)
	case tagSize:
		x, ok := varintField(v)
		if !ok {
			return badFrame("bad size")
		}
		f.Size = x
	case tagOffset:
		x, ok := varintField(v)
		if !ok {
			return badFrame("bad offset")
		}
		f.Offset = x
	case tagCode:
		x, k := binary.Uvarint(v)
		if k != len(v) || k <= 0 || x > math.MaxUint16 {
			return badFrame("bad code")
		}
		f.Code = ErrorCode(x)
	default:
		if !utf8.Valid(v) {
			return badFrame(tagNames[tag] + " is not UTF-8")
		}
		s := string(v)
		switch tag {
		case tagNodeID:
			f.NodeID = s
		case tagProductID:
			f.ProductID = s
		case tagFwVersion:
			f.FwVersion = s
		case tagSwVersion:
			f.SwVersion = s
		case tagProof:
			f.Proof = s
		case tagDeviceID:
			f.DeviceID = s
		case tagRequestID:
			f.RequestID = s
		case tagServiceID:
			f.ServiceID = s
		case tagEventType:
			f.EventType = s
		case tagCommandName:
			f.CommandName = s
		case tagResponseName:
			f.ResponseName = s
		case tagName:
			f.Name = s
		case tagResultDesc:
			f.ResultDesc = s
		case tagReason:
			f.Reason = s
		case tagVersion:
			f.Version = s
		case tagSign:
			f.Sign = s
		}
	}
	return nil
}

// varintField decodes a value that must be exactly one zigzag varint.
func varintField(v []byte) (int64, bool) {
	x, k := binary.Varint(v)
	return x, k > 0 && k == len(v)
}

// AppendEncode appends f as one binary frame. Empty fields are left out and
// fields go in tag order.
func (c binaryCodec) AppendEncode(dst []byte, f Frame) ([]byte, error) {
	if f.Type == TypeInvalid || f.Type > typeMax {
		return dst, cannotCarry(f.Type, "unknown type")
	}
	if err := validate(&f); err != nil {
		return dst, cannotCarry(f.Type, err.Reason)
	}
	for _, s := range [...]string{
		f.NodeID, f.ProductID, f.FwVersion, f.SwVersion, f.Proof, f.DeviceID, f.RequestID,
		f.ServiceID, f.EventType, f.CommandName, f.ResponseName, f.Name, f.ResultDesc,
		f.Reason, f.Version, f.Sign,
	} {
		if !utf8.ValidString(s) {
			return dst, cannotCarry(f.Type, "a string field is not UTF-8")
		}
	}
	start := len(dst)
	dst = append(dst, BinaryMagic, Version, byte(f.Type), 0)
	dst = binary.BigEndian.AppendUint32(dst, f.Seq)
	dst = append(dst, 0, 0, 0, 0) // body length, set below
	dst = appendTLV(dst, tagNodeID, f.NodeID)
	dst = appendTLV(dst, tagProductID, f.ProductID)
	dst = appendTLV(dst, tagFwVersion, f.FwVersion)
	dst = appendTLV(dst, tagSwVersion, f.SwVersion)
	dst = appendTLV(dst, tagProof, f.Proof)
	dst = appendTLV(dst, tagNonce, f.Nonce)
	dst = appendTLV(dst, tagDeviceID, f.DeviceID)
	dst = appendTLV(dst, tagRequestID, f.RequestID)
	dst = appendTLV(dst, tagServiceID, f.ServiceID)
	dst = appendTLV(dst, tagEventType, f.EventType)
	dst = appendTLV(dst, tagCommandName, f.CommandName)
	dst = appendTLV(dst, tagResponseName, f.ResponseName)
	dst = appendTLV(dst, tagName, f.Name)
	dst = appendVarintTLV(dst, tagResultCode, int64(f.ResultCode))
	dst = appendTLV(dst, tagResultDesc, f.ResultDesc)
	dst = appendTLV(dst, tagServices, f.Services)
	dst = appendTLV(dst, tagParas, f.Paras)
	dst = appendTLV(dst, tagContent, f.Content)
	if f.Code != CodeNone {
		var tmp [binary.MaxVarintLen16]byte
		dst = appendTLV(dst, tagCode, binary.AppendUvarint(tmp[:0], uint64(f.Code)))
	}
	dst = appendTLV(dst, tagReason, f.Reason)
	dst = appendTLV(dst, tagVersion, f.Version)
	dst = appendVarintTLV(dst, tagSize, f.Size)
	dst = appendTLV(dst, tagSign, f.Sign)
	dst = appendVarintTLV(dst, tagOffset, f.Offset)
	body := uint64(len(dst) - start - MaxHeaderLen)
	if body > math.MaxUint32 {
		return dst[:start], cannotCarry(f.Type, "body above 4 GiB")
	}
	binary.BigEndian.PutUint32(dst[start+8:start+12], uint32(body))
	return finishEncode(dst, start, c.max, f.Type)
}

func appendTLV[S ~string | ~[]byte](dst []byte, tag byte, v S) []byte {
	if len(v) == 0 {
		return dst
	}
	dst = append(dst, tag)
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	return append(dst, v...)
}

func appendVarintTLV(dst []byte, tag byte, x int64) []byte {
	if x == 0 {
		return dst
	}
	var tmp [binary.MaxVarintLen64]byte
	return appendTLV(dst, tag, binary.AppendVarint(tmp[:0], x))
}
