package frame

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf8"
)

// jsonlCodec is the native text format: one JSON object per '\n'-terminated
// line, keys as in the table of docs/device-protocol.md §8.
type jsonlCodec struct{ max int }

// JSONL returns the jsonl codec with the default frame size limit.
func JSONL() Codec { return NewJSONL(0) }

// NewJSONL returns the jsonl codec with a limit of maxFrame bytes per line,
// terminator included (0 or less means DefaultMaxFrame).
func NewJSONL(maxFrame int) Codec { return jsonlCodec{max: limitOrDefault(maxFrame)} }

func (jsonlCodec) Name() string { return NameJSONL }

func (jsonlCodec) Native() bool { return true }

// jsonLine is the decoding target of one line. Unknown keys are ignored.
type jsonLine struct {
	Type         string          `json:"type"`
	V            *int            `json:"v"`
	Seq          uint32          `json:"seq"`
	NodeID       string          `json:"node_id"`
	ProductID    string          `json:"product_id"`
	FwVersion    string          `json:"fw_version"`
	SwVersion    string          `json:"sw_version"`
	Proof        string          `json:"proof"`
	Nonce        string          `json:"nonce"`
	DeviceID     string          `json:"device_id"`
	RequestID    string          `json:"request_id"`
	ServiceID    string          `json:"service_id"`
	EventType    string          `json:"event_type"`
	CommandName  string          `json:"command_name"`
	ResponseName string          `json:"response_name"`
	Name         string          `json:"name"`
	ResultCode   int32           `json:"result_code"`
	ResultDesc   string          `json:"result_desc"`
	Services     json.RawMessage `json:"services"`
	Paras        json.RawMessage `json:"paras"`
	Content      string          `json:"content"`
	ContentB64   string          `json:"content_b64"`
	Code         string          `json:"code"`
	Reason       string          `json:"reason"`
	Version      string          `json:"version"`
	Size         int64           `json:"size"`
	Sign         string          `json:"sign"`
	Offset       int64           `json:"offset"`
}

// Decode decodes the first line of buf. atEOF is ignored: a line without its
// '\n' is incomplete. The returned Frame does not alias buf.
func (c jsonlCodec) Decode(buf []byte, _ bool) (Frame, int, error) {
	line, n := cutLine(buf, c.max)
	if n == 0 {
		if len(buf) >= c.max {
			return Frame{}, 0, tooLarge(c.max)
		}
		return Frame{}, 0, ErrIncomplete
	}
	if len(bytes.TrimLeft(line, " \t")) == 0 {
		return Frame{}, n, badFrame("empty line")
	}
	f, err := decodeJSONLine(line)
	if err != nil {
		return Frame{}, n, err
	}
	return f, n, nil
}

func decodeJSONLine(line []byte) (Frame, *Error) {
	var l jsonLine
	if err := json.Unmarshal(line, &l); err != nil {
		return Frame{}, jsonError(err)
	}
	if l.Type == "" {
		return Frame{}, badFrame("type is missing")
	}
	t, ok := ParseType(l.Type)
	if !ok {
		return Frame{}, &Error{Code: CodeUnsupported, Reason: "unknown type " + strconv.Quote(truncate(l.Type))}
	}
	if l.V != nil && *l.V != Version {
		return Frame{}, &Error{Code: CodeUnsupported, Reason: "protocol version " + strconv.Itoa(*l.V) + " not supported"}
	}
	f := Frame{
		Type: t, Seq: l.Seq,
		NodeID: l.NodeID, ProductID: l.ProductID, FwVersion: l.FwVersion, SwVersion: l.SwVersion,
		Proof: l.Proof, DeviceID: l.DeviceID, RequestID: l.RequestID,
		ServiceID: l.ServiceID, EventType: l.EventType, CommandName: l.CommandName,
		ResponseName: l.ResponseName, Name: l.Name,
		ResultCode: l.ResultCode, ResultDesc: l.ResultDesc,
		Services: nullToNil(l.Services), Paras: nullToNil(l.Paras),
		Reason: l.Reason, Version: l.Version, Size: l.Size, Sign: l.Sign, Offset: l.Offset,
	}
	if l.Nonce != "" {
		nonce, err := hex.DecodeString(l.Nonce)
		if err != nil {
			return Frame{}, badFrame("nonce is not hex")
		}
		f.Nonce = nonce
	}
	switch {
	case l.Content != "" && l.ContentB64 != "":
		return Frame{}, badFrame("content and content_b64 are exclusive")
	case l.Content != "":
		f.Content = []byte(l.Content)
	case l.ContentB64 != "":
		b, err := base64.StdEncoding.DecodeString(l.ContentB64)
		if err != nil {
			return Frame{}, badFrame("content_b64 is not base64")
		}
		f.Content = b
	}
	if l.Code != "" {
		code, ok := ParseErrorCode(l.Code)
		if !ok {
			return Frame{}, badFrame("unknown code " + strconv.Quote(truncate(l.Code)))
		}
		f.Code = code
	}
	if err := validate(&f); err != nil {
		return Frame{}, err
	}
	return f, nil
}

// jsonError turns an encoding/json error into a short reason that does not
// echo the input.
func jsonError(err error) *Error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return badFrame("not JSON at offset " + strconv.FormatInt(syn.Offset, 10))
	case errors.As(err, &typ):
		if typ.Field != "" {
			return badFrame(typ.Field + " has the wrong type")
		}
		return badFrame("not a JSON object")
	}
	return badFrame("not a JSON object")
}

func nullToNil(raw json.RawMessage) json.RawMessage {
	if string(raw) == "null" {
		return nil
	}
	return raw
}

func truncate(s string) string {
	const n = 32
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// AppendEncode appends f as one JSON line. Empty fields are left out; "v" is
// written in hello, challenge and welcome. Content goes as "content" when it
// is UTF-8 and as "content_b64" otherwise and always in ota_chunk.
func (c jsonlCodec) AppendEncode(dst []byte, f Frame) ([]byte, error) {
	if f.Type == TypeInvalid || f.Type > typeMax {
		return dst, cannotCarry(f.Type, "unknown type")
	}
	if err := validate(&f); err != nil {
		return dst, cannotCarry(f.Type, err.Reason)
	}
	if _, ok := codeNames[f.Code]; !ok {
		return dst, cannotCarry(f.Type, "unknown error code "+strconv.Itoa(int(f.Code)))
	}
	start := len(dst)
	dst = append(dst, `{"type":"`...)
	dst = append(dst, f.Type.String()...)
	dst = append(dst, '"')
	switch f.Type {
	case TypeHello, TypeChallenge, TypeWelcome:
		dst = append(dst, `,"v":`...)
		dst = strconv.AppendInt(dst, Version, 10)
	}
	if f.Seq != 0 {
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendUint(dst, uint64(f.Seq), 10)
	}
	dst = appendStringField(dst, `,"node_id":`, f.NodeID)
	dst = appendStringField(dst, `,"product_id":`, f.ProductID)
	dst = appendStringField(dst, `,"fw_version":`, f.FwVersion)
	dst = appendStringField(dst, `,"sw_version":`, f.SwVersion)
	dst = appendStringField(dst, `,"proof":`, f.Proof)
	if len(f.Nonce) > 0 {
		dst = append(dst, `,"nonce":"`...)
		dst = hex.AppendEncode(dst, f.Nonce)
		dst = append(dst, '"')
	}
	dst = appendStringField(dst, `,"device_id":`, f.DeviceID)
	dst = appendStringField(dst, `,"request_id":`, f.RequestID)
	dst = appendStringField(dst, `,"service_id":`, f.ServiceID)
	dst = appendStringField(dst, `,"event_type":`, f.EventType)
	dst = appendStringField(dst, `,"command_name":`, f.CommandName)
	dst = appendStringField(dst, `,"response_name":`, f.ResponseName)
	dst = appendStringField(dst, `,"name":`, f.Name)
	if f.ResultCode != 0 {
		dst = append(dst, `,"result_code":`...)
		dst = strconv.AppendInt(dst, int64(f.ResultCode), 10)
	}
	dst = appendStringField(dst, `,"result_desc":`, f.ResultDesc)
	if f.Code != CodeNone {
		dst = append(dst, `,"code":"`...)
		dst = append(dst, f.Code.String()...)
		dst = append(dst, '"')
	}
	dst = appendStringField(dst, `,"reason":`, f.Reason)
	dst = appendStringField(dst, `,"version":`, f.Version)
	if f.Size != 0 {
		dst = append(dst, `,"size":`...)
		dst = strconv.AppendInt(dst, f.Size, 10)
	}
	dst = appendStringField(dst, `,"sign":`, f.Sign)
	if f.Offset != 0 {
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendInt(dst, f.Offset, 10)
	}
	if len(f.Services) > 0 {
		dst = append(dst, `,"services":`...)
		dst = appendRawJSON(dst, f.Services)
	}
	if len(f.Paras) > 0 {
		dst = append(dst, `,"paras":`...)
		dst = appendRawJSON(dst, f.Paras)
	}
	if len(f.Content) > 0 {
		if f.Type != TypeOTAChunk && utf8.Valid(f.Content) {
			dst = append(dst, `,"content":`...)
			dst = appendJSONString(dst, f.Content)
		} else {
			dst = append(dst, `,"content_b64":"`...)
			dst = base64.StdEncoding.AppendEncode(dst, f.Content)
			dst = append(dst, '"')
		}
	}
	dst = append(dst, '}', '\n')
	return finishEncode(dst, start, c.max, f.Type)
}

func appendStringField(dst []byte, key, s string) []byte {
	if s == "" {
		return dst
	}
	return appendJSONText(append(dst, key...), s)
}

// appendRawJSON appends a raw JSON value that passed validate on one line:
// when it holds line breaks (always white space in valid JSON) the white
// space outside strings is dropped.
func appendRawJSON(dst, raw []byte) []byte {
	if bytes.IndexByte(raw, '\n') < 0 && bytes.IndexByte(raw, '\r') < 0 {
		return append(dst, raw...)
	}
	inString, escaped := false, false
	for _, c := range raw {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			dst = append(dst, c)
			continue
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '"':
			inString = true
		}
		dst = append(dst, c)
	}
	return dst
}
