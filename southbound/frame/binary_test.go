package frame

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBinaryGolden pins the annotated examples of docs/device-protocol.md.
func TestBinaryGolden(t *testing.T) {
	tests := []struct {
		f   Frame
		hex string
	}{
		{Frame{Type: TypeHello, NodeID: testNodeID, FwVersion: "v1.2.0"},
			"b5 01 01 00 00000000 00000014 01 0a 736d6f6b652d30303031 03 06 76312e322e30"},
		{Frame{Type: TypeError, Seq: 42, Code: CodeBusy, Reason: "queue full"},
			"b5 01 10 00 0000002a 0000000f 13 01 06 14 0a 7175657565206675 6c6c"},
		{Frame{Type: TypeOTAAck, RequestID: "job-17", Offset: 8192},
			"b5 01 15 00 00000000 0000000d 08 06 6a6f622d3137 18 03 808001"},
		{Frame{Type: TypeAck, Seq: 42}, "b5 01 0f 00 0000002a 00000000"},
		{Frame{Type: TypeCommandResponse, RequestID: "r", ResultCode: -1},
			"b5 01 08 00 00000000 00000006 08 01 72 0e 01 01"},
	}
	for _, tc := range tests {
		want := unhex(t, tc.hex)
		got, err := Binary().AppendEncode(nil, tc.f)
		if err != nil {
			t.Fatalf("%s: %v", tc.f.Type, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s:\n got % x\nwant % x", tc.f.Type, got, want)
		}
		f, n, err := Binary().Decode(want, false)
		if err != nil || n != len(want) || !equalFrames(f, tc.f) {
			t.Errorf("%s: decode = %+v, %d, %v", tc.f.Type, f, n, err)
		}
	}
}

func TestBinaryDecode(t *testing.T) {
	tests := []struct {
		name string
		hex  string
		want Frame
	}{
		{"unknown tag skipped", "b5 01 11 00 00000003 00000005 c8 03 010203", Frame{Type: TypePing, Seq: 3}},
		{"empty string field", "b5 01 04 00 00000000 00000002 0d 00", Frame{Type: TypeMessage}},
		{"non-minimal varint", "b5 01 15 00 00000000 00000007 08 01 6a 18 02 8400", Frame{Type: TypeOTAAck, RequestID: "j", Offset: 2}},
		{"fields in any order", "b5 01 01 00 00000000 00000006 03 01 76 01 01 6e", Frame{Type: TypeHello, NodeID: "n", FwVersion: "v"}},
	}
	for _, tc := range tests {
		in := unhex(t, tc.hex)
		got, n, err := Binary().Decode(in, false)
		if err != nil || n != len(in) || !equalFrames(got, tc.want) {
			t.Errorf("%s: got %+v, n %d, err %v", tc.name, got, n, err)
		}
	}
}

func TestBinaryDecodeErrors(t *testing.T) {
	tests := []struct {
		name  string
		hex   string
		code  ErrorCode
		fatal bool
	}{
		{"bad magic", "b6", CodeBadFrame, true},
		{"text instead of binary", "7b2274797065223a2270696e67227d0a", CodeBadFrame, true},
		{"bad version", "b5 02", CodeUnsupported, true},
		{"version 0", "b5 00 11 00 00000000 00000000", CodeUnsupported, true},
		{"flags set", "b5 01 11 01 00000000 00000000", CodeUnsupported, false},
		{"type 0", "b5 01 00 00 00000000 00000000", CodeUnsupported, false},
		{"type unknown", "b5 01 17 00 00000000 00000002 01 00", CodeUnsupported, false},
		{"tag 0", "b5 01 11 00 00000000 00000002 00 00", CodeBadFrame, false},
		{"repeated tag", "b5 01 01 00 00000000 00000006 01 01 61 01 01 62", CodeBadFrame, false},
		{"field past body", "b5 01 01 00 00000000 00000003 01 05 61", CodeBadFrame, false},
		{"truncated length", "b5 01 01 00 00000000 00000002 01 80", CodeBadFrame, false},
		{"huge length", "b5 01 01 00 00000000 0000000b 01 ffffffffffffffffff01", CodeBadFrame, false},
		{"string not utf8", "b5 01 01 00 00000000 00000003 01 01 ff", CodeBadFrame, false},
		{"varint trailing bytes", "b5 01 15 00 00000000 00000007 08 01 6a 18 02 0200", CodeBadFrame, false},
		{"empty varint", "b5 01 15 00 00000000 00000005 08 01 6a 18 00", CodeBadFrame, false},
		{"result code above int32", "b5 01 08 00 00000000 0000000a 08 01 72 0e 05 8080808010", CodeBadFrame, false},
		{"code above uint16", "b5 01 10 00 00000000 00000005 13 03 808004", CodeBadFrame, false},
		{"negative size", "b5 01 13 00 00000000 0000000f 08 01 6a 15 01 76 16 01 09 17 01 73 18 01 01", CodeBadFrame, false},
		{"services not array", "b5 01 05 00 00000001 00000004 10 02 7b7d", CodeBadFrame, false},
		{"paras not json", "b5 01 07 00 00000000 00000007 08 01 72 11 02 7b7b", CodeBadFrame, false},
		{"missing required", "b5 01 05 00 00000001 00000000", CodeBadFrame, false},
	}
	for _, tc := range tests {
		in := unhex(t, tc.hex)
		_, n, err := Binary().Decode(in, false)
		var fe *Error
		if !errors.As(err, &fe) || fe.Code != tc.code || fe.Fatal != tc.fatal {
			t.Errorf("%s: err %v; want %s fatal=%v", tc.name, err, tc.code, tc.fatal)
			continue
		}
		if wantN := len(in); tc.fatal && n != 0 || !tc.fatal && n != wantN {
			t.Errorf("%s: n = %d", tc.name, n)
		}
	}
}

// TestBinaryAliases documents that byte fields alias the input and string
// fields do not.
func TestBinaryAliases(t *testing.T) {
	enc, err := Binary().AppendEncode(nil, Frame{Type: TypeMessage, Name: "n", Content: []byte("abc")})
	if err != nil {
		t.Fatal(err)
	}
	f, _, err := Binary().Decode(enc, false)
	if err != nil {
		t.Fatal(err)
	}
	c := f.Clone()
	for i := range enc {
		enc[i] = 'z'
	}
	if string(f.Content) != "zzz" || f.Name != "n" {
		t.Fatalf("aliasing: content %q, name %q", f.Content, f.Name)
	}
	if string(c.Content) != "abc" {
		t.Fatalf("Clone still aliases: %q", c.Content)
	}
	if cap(f.Content) != len(f.Content) {
		t.Fatalf("aliased field has spare capacity %d: an append would overwrite the next field", cap(f.Content))
	}
}
