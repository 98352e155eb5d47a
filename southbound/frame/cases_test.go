package frame

import (
	"encoding/json"
	"reflect"
)

// The shared case table: one or more realistic frames of every type, used
// by the tests of every codec, the fuzz seeds and the benchmarks. Field
// values follow iotda-protocol §0 (identifiers), §2 (payload shapes) and §4
// (OTA).

var (
	testSecret   = []byte("device-secret-0001")
	testNonce    = []byte{0x3f, 0x8a, 0x1c, 0x5e, 0x9b, 0x2d, 0x7f, 0x40, 0xa6, 0xe1, 0xc3, 0xb5, 0xd7, 0xf9, 0x02, 0x14}
	testProof    = "bb19e3034883a04e37bfedbed4a6f6909f66eaa7ef599f39f39a54e41f23a47b" // computed with Python's hmac module
	testServices = json.RawMessage(`[{"service_id":"smokeDetector","properties":{"alarm":1,"smokeConcentration":12.5,"temperature":23.1,"humidity":56},"event_time":"20240101T000000Z"}]`)
	testShadow   = json.RawMessage(`[{"service_id":"smokeDetector","desired":{"properties":{"alarm":0},"event_time":"20240101T000000Z"},"reported":{"properties":{"alarm":1},"event_time":"20240101T000000Z"},"version":3}]`)
)

const (
	testNodeID   = "smoke-0001"
	testDeviceID = "64f1c2a0b2e3_smoke-0001"
	testReqID    = "b8a2e4c0-6f1d-4a3e-9c57-2d0f81e6a9b4"
	testSign     = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
)

type frameCase struct {
	name string
	f    Frame
	// demo is what the demo codec writes for f, "" when it writes nothing;
	// demoCannot says it refuses f with ErrCannotCarry.
	demo       string
	demoCannot bool
}

func frameCases() []frameCase {
	return []frameCase{
		{name: "hello", demoCannot: true, f: Frame{
			Type: TypeHello, NodeID: testNodeID, ProductID: "64f1c2a0b2e3", FwVersion: "v1.2.0", SwVersion: "v1.0.3",
		}},
		{name: "hello_token", demoCannot: true, f: Frame{
			Type: TypeHello, NodeID: testNodeID, FwVersion: "v1.2.0", Proof: testProof,
		}},
		{name: "challenge", f: Frame{Type: TypeChallenge, Nonce: testNonce}},
		{name: "welcome", f: Frame{Type: TypeWelcome, DeviceID: testDeviceID},
			demo: "sub device: " + testDeviceID + " go online\n"},
		{name: "message_up", f: Frame{Type: TypeMessage, Seq: 7, Name: "alarm", Content: []byte("smoke detected in room 3")},
			demo: "smoke detected in room 3\n"},
		{name: "message_down_utf8", f: Frame{Type: TypeMessage, Content: []byte("温度过高: reboot at 02:00")},
			demo: "温度过高: reboot at 02:00\n"},
		{name: "message_escapes", f: Frame{Type: TypeMessage, Name: "ctl\x01\x1f", Content: []byte("line1\nline2 \"quoted\" \\ tab\t\r")},
			demo: "line1\nline2 \"quoted\" \\ tab\t\r\n"},
		{name: "message_binary", demoCannot: true, f: Frame{Type: TypeMessage, Seq: 8, Content: []byte{0x00, 0xff, 0xfe, 0x10}}},
		{name: "properties", demoCannot: true, f: Frame{Type: TypeProperties, Seq: 42, Services: testServices}},
		{name: "event_up", f: Frame{Type: TypeEvent, Seq: 9, ServiceID: "alarm", EventType: "smoke_alarm", Paras: json.RawMessage(`{"level":3,"room":"r3"}`)},
			demo: `{"service_id":"alarm","event_type":"smoke_alarm","paras":{"level":3,"room":"r3"}}` + "\n"},
		{name: "event_down", f: Frame{Type: TypeEvent, ServiceID: "$time_sync", EventType: "time_sync_response",
			Paras: json.RawMessage(`{"device_send_time":1582685678789,"server_recv_time":1582685698000,"server_send_time":1582685698000}`)},
			demo: `{"service_id":"$time_sync","event_type":"time_sync_response","paras":{"device_send_time":1582685678789,"server_recv_time":1582685698000,"server_send_time":1582685698000}}` + "\n"},
		{name: "command", f: Frame{Type: TypeCommand, RequestID: testReqID, ServiceID: "smokeDetector", CommandName: "ring",
			Paras: json.RawMessage(`{"duration":5}`)},
			demo: `{"service_id":"smokeDetector","command_name":"ring","paras":{"duration":5},"request_id":"` + testReqID + `"}` + "\n"},
		{name: "command_response", demoCannot: true, f: Frame{Type: TypeCommandResponse, RequestID: testReqID,
			ResponseName: "ring_result", Paras: json.RawMessage(`{"result":"ok"}`)}},
		{name: "command_response_failed", demoCannot: true, f: Frame{Type: TypeCommandResponse, RequestID: testReqID, ResultCode: 1}},
		{name: "property_set", f: Frame{Type: TypePropertySet, RequestID: testReqID,
			Services: json.RawMessage(`[{"service_id":"smokeDetector","properties":{"alarm":0}}]`)},
			demo: `{"request_id":"` + testReqID + `","services":[{"service_id":"smokeDetector","properties":{"alarm":0}}]}` + "\n"},
		{name: "property_set_response", demoCannot: true, f: Frame{Type: TypePropertySetResponse, RequestID: testReqID, ResultDesc: "success"}},
		{name: "property_set_response_failed", demoCannot: true, f: Frame{Type: TypePropertySetResponse, RequestID: testReqID, ResultCode: -1, ResultDesc: "read-only property"}},
		{name: "property_get", f: Frame{Type: TypePropertyGet, RequestID: testReqID, ServiceID: "smokeDetector"},
			demo: `{"request_id":"` + testReqID + `","service_id":"smokeDetector"}` + "\n"},
		{name: "property_get_all", f: Frame{Type: TypePropertyGet, RequestID: testReqID},
			demo: `{"request_id":"` + testReqID + `"}` + "\n"},
		{name: "property_get_response", demoCannot: true, f: Frame{Type: TypePropertyGetResponse, RequestID: testReqID, Services: testServices}},
		{name: "shadow_get", demoCannot: true, f: Frame{Type: TypeShadowGet, RequestID: "sg-000001", ServiceID: "smokeDetector"}},
		{name: "shadow", demoCannot: true, f: Frame{Type: TypeShadow, RequestID: "sg-000001", Paras: testShadow}},
		{name: "ack", f: Frame{Type: TypeAck, Seq: 42}},
		{name: "ack_max_seq", f: Frame{Type: TypeAck, Seq: 1<<32 - 1}},
		{name: "error_busy", f: Frame{Type: TypeError, Seq: 42, Code: CodeBusy, Reason: "uplink queue full"},
			demo: "error: uplink queue full\n"},
		{name: "error_auth", f: Frame{Type: TypeError, Code: CodeAuthFailed, Reason: "bad proof"},
			demo: "error: bad proof\n"},
		{name: "error_command", f: Frame{Type: TypeError, RequestID: testReqID, Code: CodeBadFrame, Reason: "paras must be a JSON object"},
			demo: "error: paras must be a JSON object\n"},
		{name: "error_no_reason", f: Frame{Type: TypeError, Code: CodeKicked}, demo: "error: kicked\n"},
		{name: "ping", f: Frame{Type: TypePing, Seq: 3}},
		{name: "pong", f: Frame{Type: TypePong, Seq: 3}},
		{name: "ota_offer", demoCannot: true, f: Frame{Type: TypeOTAOffer, RequestID: "job-17", Version: "v1.3.0", Size: 81362928, Sign: testSign}},
		{name: "ota_chunk", demoCannot: true, f: Frame{Type: TypeOTAChunk, RequestID: "job-17", Offset: 4096,
			Content: []byte{0x7f, 'E', 'L', 'F', 0x02, 0x01, 0x01, 0x00, 0xff, 0x80}}},
		{name: "ota_chunk_first", demoCannot: true, f: Frame{Type: TypeOTAChunk, RequestID: "job-17", Content: []byte("text-looking chunk")}},
		{name: "ota_ack", demoCannot: true, f: Frame{Type: TypeOTAAck, RequestID: "job-17", Offset: 8192}},
		{name: "ota_ack_refused", demoCannot: true, f: Frame{Type: TypeOTAAck, RequestID: "job-17", ResultCode: 5}},
		{name: "ota_result", demoCannot: true, f: Frame{Type: TypeOTAResult, RequestID: "job-17", Version: "v1.3.0", ResultDesc: "upgrade success"}},
		{name: "ota_result_failed", demoCannot: true, f: Frame{Type: TypeOTAResult, RequestID: "job-17", ResultCode: 7, Version: "v1.2.0", ResultDesc: "package verification failed"}},
	}
}

// normalize makes empty slices nil so frames compare by content.
func normalize(f Frame) Frame {
	if len(f.Nonce) == 0 {
		f.Nonce = nil
	}
	if len(f.Services) == 0 {
		f.Services = nil
	}
	if len(f.Paras) == 0 {
		f.Paras = nil
	}
	if len(f.Content) == 0 {
		f.Content = nil
	}
	return f
}

func equalFrames(a, b Frame) bool {
	return reflect.DeepEqual(normalize(a), normalize(b))
}

func nativeCodecs() []Codec { return []Codec{JSONL(), Binary()} }
