package frame

import (
	"errors"
	"strings"
	"testing"
)

// TestJSONLGolden pins the encodings shown in docs/device-protocol.md.
func TestJSONLGolden(t *testing.T) {
	tests := []struct {
		f    Frame
		want string
	}{
		{Frame{Type: TypeHello, NodeID: testNodeID, FwVersion: "v1.2.0"},
			`{"type":"hello","v":1,"node_id":"smoke-0001","fw_version":"v1.2.0"}`},
		{Frame{Type: TypeChallenge, Nonce: testNonce},
			`{"type":"challenge","v":1,"nonce":"3f8a1c5e9b2d7f40a6e1c3b5d7f90214"}`},
		{Frame{Type: TypeProperties, Seq: 42, Services: []byte(`[{"service_id":"smokeDetector","properties":{"alarm":1}}]`)},
			`{"type":"properties","seq":42,"services":[{"service_id":"smokeDetector","properties":{"alarm":1}}]}`},
		{Frame{Type: TypeError, Seq: 42, Code: CodeBusy, Reason: "queue full"},
			`{"type":"error","seq":42,"code":"busy","reason":"queue full"}`},
		{Frame{Type: TypeMessage, Name: "tab\there", Content: []byte{'a', 0x01, '"'}},
			`{"type":"message","name":"tab\there","content":"a\u0001\""}`},
		{Frame{Type: TypeMessage, Content: []byte{0xff, 0x00}},
			`{"type":"message","content_b64":"/wA="}`},
		{Frame{Type: TypeOTAChunk, RequestID: "job-17", Offset: 4096, Content: []byte("abc")},
			`{"type":"ota_chunk","request_id":"job-17","offset":4096,"content_b64":"YWJj"}`},
		{Frame{Type: TypeCommandResponse, RequestID: "r1", ResultCode: -3},
			`{"type":"command_response","request_id":"r1","result_code":-3}`},
		{Frame{Type: TypeEvent, ServiceID: "s\xff", EventType: "e", Paras: []byte("{\"a\":\n1}")},
			`{"type":"event","service_id":"s` + "\uFFFD" + `","event_type":"e","paras":{"a":1}}`},
	}
	for _, tc := range tests {
		got, err := JSONL().AppendEncode(nil, tc.f)
		if err != nil {
			t.Errorf("%s: %v", tc.f.Type, err)
			continue
		}
		if string(got) != tc.want+"\n" {
			t.Errorf("%s:\n got %s\nwant %s", tc.f.Type, got, tc.want)
		}
	}
}

func TestJSONLDecode(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Frame
	}{
		{"unknown keys ignored", `{"type":"ping","seq":3,"future":{"x":[1,2]},"qos":1}` + "\n",
			Frame{Type: TypePing, Seq: 3}},
		{"crlf", `{"type":"pong"}` + "\r\n", Frame{Type: TypePong}},
		{"v 1", `{"type":"hello","v":1,"node_id":"n"}` + "\n", Frame{Type: TypeHello, NodeID: "n"}},
		{"null services", `{"type":"message","services":null,"content":"x"}` + "\n", Frame{Type: TypeMessage, Content: []byte("x")}},
		{"shadow array", `{"type":"shadow","request_id":"r","paras":[{"service_id":"s"}]}` + "\n",
			Frame{Type: TypeShadow, RequestID: "r", Paras: []byte(`[{"service_id":"s"}]`)}},
		{"shadow object", `{"type":"shadow","request_id":"r","paras":{}}` + "\n",
			Frame{Type: TypeShadow, RequestID: "r", Paras: []byte(`{}`)}},
		{"white space", ` { "type" : "ota_ack" , "request_id" : "j", "offset": 10 } ` + "\n",
			Frame{Type: TypeOTAAck, RequestID: "j", Offset: 10}},
		{"uppercase nonce hex", `{"type":"challenge","nonce":"0A0b"}` + "\n", Frame{Type: TypeChallenge, Nonce: []byte{10, 11}}},
		{"content_b64 on message", `{"type":"message","content_b64":"/wA="}` + "\n", Frame{Type: TypeMessage, Content: []byte{0xff, 0}}},
		{"content on chunk", `{"type":"ota_chunk","request_id":"j","content":"abc"}` + "\n", Frame{Type: TypeOTAChunk, RequestID: "j", Content: []byte("abc")}},
	}
	for _, tc := range tests {
		got, n, err := JSONL().Decode([]byte(tc.in), false)
		if err != nil || n != len(tc.in) || !equalFrames(got, tc.want) {
			t.Errorf("%s: got %+v, n %d, err %v", tc.name, got, n, err)
		}
	}
}

func TestJSONLDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		code ErrorCode
	}{
		{"empty line", "\n", CodeBadFrame},
		{"blank line", " \t\r\n", CodeBadFrame},
		{"not json", "hello\n", CodeBadFrame},
		{"truncated json", `{"type":"ping"` + "\n", CodeBadFrame},
		{"array", "[1,2]\n", CodeBadFrame},
		{"null", "null\n", CodeBadFrame},
		{"two values", `{"type":"ping"} {}` + "\n", CodeBadFrame},
		{"type missing", `{"seq":1}` + "\n", CodeBadFrame},
		{"type wrong kind", `{"type":4}` + "\n", CodeBadFrame},
		{"type unknown", `{"type":"teleport"}` + "\n", CodeUnsupported},
		{"type invalid", `{"type":"invalid"}` + "\n", CodeUnsupported},
		{"v 2", `{"type":"hello","v":2,"node_id":"n"}` + "\n", CodeUnsupported},
		{"v not int", `{"type":"hello","v":"1","node_id":"n"}` + "\n", CodeBadFrame},
		{"seq negative", `{"type":"ping","seq":-1}` + "\n", CodeBadFrame},
		{"seq too big", `{"type":"ping","seq":4294967296}` + "\n", CodeBadFrame},
		{"result_code too big", `{"type":"command_response","request_id":"r","result_code":2147483648}` + "\n", CodeBadFrame},
		{"hello without node_id", `{"type":"hello"}` + "\n", CodeBadFrame},
		{"command_response without request_id", `{"type":"command_response"}` + "\n", CodeBadFrame},
		{"property_set_response without request_id", `{"type":"property_set_response","result_code":0}` + "\n", CodeBadFrame},
		{"property_get_response without services", `{"type":"property_get_response","request_id":"r"}` + "\n", CodeBadFrame},
		{"properties without services", `{"type":"properties","seq":1}` + "\n", CodeBadFrame},
		{"services object", `{"type":"properties","services":{"a":1}}` + "\n", CodeBadFrame},
		{"services string", `{"type":"properties","services":"[]"}` + "\n", CodeBadFrame},
		{"paras array on event", `{"type":"event","service_id":"s","event_type":"e","paras":[1]}` + "\n", CodeBadFrame},
		{"paras number on shadow", `{"type":"shadow","request_id":"r","paras":3}` + "\n", CodeBadFrame},
		{"content and content_b64", `{"type":"message","content":"a","content_b64":"YQ=="}` + "\n", CodeBadFrame},
		{"bad base64", `{"type":"message","content_b64":"!!"}` + "\n", CodeBadFrame},
		{"bad nonce", `{"type":"challenge","nonce":"xyz"}` + "\n", CodeBadFrame},
		{"unknown code", `{"type":"error","code":"meltdown"}` + "\n", CodeBadFrame},
		{"error without code", `{"type":"error","reason":"x"}` + "\n", CodeBadFrame},
		{"ack without seq", `{"type":"ack"}` + "\n", CodeBadFrame},
		{"negative size", `{"type":"ota_offer","request_id":"j","version":"v","size":-5,"sign":"s"}` + "\n", CodeBadFrame},
	}
	for _, tc := range tests {
		_, n, err := JSONL().Decode([]byte(tc.in), false)
		var fe *Error
		if !errors.As(err, &fe) || fe.Fatal || fe.Code != tc.code || n != len(tc.in) {
			t.Errorf("%s: n %d, err %v; want non-fatal %s consuming %d", tc.name, n, err, tc.code, len(tc.in))
			continue
		}
		if len(fe.Reason) > 80 || strings.ContainsAny(fe.Reason, "\n") {
			t.Errorf("%s: reason %q is not a short single line", tc.name, fe.Reason)
		}
	}
}

// TestJSONLReasonNoEcho: reasons go back to the device and into logs, so
// they must not carry the offending input at length.
func TestJSONLReasonNoEcho(t *testing.T) {
	in := `{"type":"` + strings.Repeat("x", 1000) + `"}` + "\n"
	_, _, err := JSONL().Decode([]byte(in), false)
	var fe *Error
	if !errors.As(err, &fe) || len(fe.Reason) > 64 {
		t.Fatalf("err = %v", err)
	}
}
