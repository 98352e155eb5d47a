package frame

import (
	"encoding/json"
	"testing"
)

// benchReport is a typical property report of about 200 bytes on the wire.
var benchReport = Frame{Type: TypeProperties, Seq: 123456, Services: json.RawMessage(
	`[{"service_id":"smokeDetector","properties":{"alarm":1,"smokeConcentration":12.5,"temperature":23.1,"humidity":56,"battery":87},"event_time":"20240101T000000Z"}]`)}

// benchDemo is a demo device message of about 200 bytes.
var benchDemo = []byte("64f1c2a0b2e3_smoke-0001|" +
	"alarm=1;smokeConcentration=12.5;temperature=23.1;humidity=56;battery=87;room=3;floor=2;" +
	"building=north;firmware=v1.2.0;uptime=86400;rssi=-67;seq=123456;note=all good\n")

// benchCommand is a typical platform command sent down.
var benchCommand = Frame{Type: TypeCommand, RequestID: testReqID, ServiceID: "smokeDetector",
	CommandName: "ring", Paras: json.RawMessage(`{"duration":5,"volume":80,"pattern":"fast"}`)}

func benchDecode(b *testing.B, c Codec, enc []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		if _, _, err := c.Decode(enc, false); err != nil {
			b.Fatal(err)
		}
	}
}

func benchEncode(b *testing.B, c Codec, f Frame) {
	buf, err := c.AppendEncode(nil, f)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if buf, err = c.AppendEncode(buf[:0], f); err != nil {
			b.Fatal(err)
		}
	}
}

func mustEncode(b *testing.B, c Codec, f Frame) []byte {
	enc, err := c.AppendEncode(nil, f)
	if err != nil {
		b.Fatal(err)
	}
	return enc
}

func BenchmarkDecode(b *testing.B) {
	b.Run("demo", func(b *testing.B) { benchDecode(b, Demo(), benchDemo) })
	b.Run("jsonl", func(b *testing.B) { benchDecode(b, JSONL(), mustEncode(b, JSONL(), benchReport)) })
	b.Run("binary", func(b *testing.B) { benchDecode(b, Binary(), mustEncode(b, Binary(), benchReport)) })
}

func BenchmarkEncode(b *testing.B) {
	b.Run("demo", func(b *testing.B) { benchEncode(b, Demo(), benchCommand) })
	b.Run("jsonl", func(b *testing.B) { benchEncode(b, JSONL(), benchReport) })
	b.Run("binary", func(b *testing.B) { benchEncode(b, Binary(), benchReport) })
}
