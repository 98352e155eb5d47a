package frame

import (
	"errors"
	"strings"
	"testing"
)

func TestDemoEncode(t *testing.T) {
	c := Demo()
	for _, tc := range frameCases() {
		got, err := c.AppendEncode([]byte("old"), tc.f)
		switch {
		case tc.demoCannot:
			if !errors.Is(err, ErrCannotCarry) || string(got) != "old" {
				t.Errorf("%s: got %q, err %v; want ErrCannotCarry", tc.name, got, err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case string(got) != "old"+tc.demo:
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got[3:], tc.demo)
		}
	}
}

// TestDemoDecode: inputs as Huawei's Python demo device (tcp_device.py, no
// delimiter) and nc (newline) send them, iotda-protocol §6.1.
func TestDemoDecode(t *testing.T) {
	type want struct {
		node, content string
		n             int
		code          ErrorCode // non-fatal error expected when not CodeNone
	}
	tests := []struct {
		name  string
		in    string
		atEOF bool
		want  want
	}{
		{"demo device write", "64f1c2a0b2e3_smoke-0001|hello", true, want{"64f1c2a0b2e3_smoke-0001", "hello", 29, 0}},
		{"nc line", "dev-1|temp=21\n", false, want{"dev-1", "temp=21", 14, 0}},
		{"crlf line", "dev-1|temp=21\r\n", false, want{"dev-1", "temp=21", 15, 0}},
		{"two lines, first", "a|1\nb|2\n", false, want{"a", "1", 4, 0}},
		{"content with bars", "a|x|y|z\n", false, want{"a", "x|y|z", 8, 0}},
		{"empty content", "a|\n", false, want{"a", "", 3, 0}},
		{"unicode", "a|温度=21\n", false, want{"a", "温度=21", 12, 0}},
		{"gtwdel", "a|gtwdel", true, want{"a", "gtwdel", 8, 0}},
		{"trailing cr at eof", "a|b\r", true, want{"a", "b", 4, 0}},
		{"empty line", "\n", false, want{n: 1, code: CodeBadFrame}},
		{"empty crlf line", "\r\nx", false, want{n: 2, code: CodeBadFrame}},
		{"no bar", "just text\n", false, want{n: 10, code: CodeBadFrame}},
		{"no bar at eof", "gtwdel", true, want{n: 6, code: CodeBadFrame}},
		{"empty id", "|content\n", false, want{n: 9, code: CodeBadFrame}},
		{"long id", strings.Repeat("d", 129) + "|x\n", false, want{n: 132, code: CodeBadFrame}},
		{"not utf8", "a|\xff\xfe\n", false, want{n: 5, code: CodeBadFrame}},
	}
	c := Demo()
	for _, tc := range tests {
		f, n, err := c.Decode([]byte(tc.in), tc.atEOF)
		if n != tc.want.n {
			t.Errorf("%s: n = %d, want %d", tc.name, n, tc.want.n)
		}
		if tc.want.code != CodeNone {
			var fe *Error
			if !errors.As(err, &fe) || fe.Fatal || fe.Code != tc.want.code {
				t.Errorf("%s: err = %v, want non-fatal %s", tc.name, err, tc.want.code)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if f.Type != TypeMessage || f.NodeID != tc.want.node || string(f.Content) != tc.want.content {
			t.Errorf("%s: got %+v", tc.name, f)
		}
	}
}

// TestDemoPartial: with a newline the demo codec waits for it like the
// native ones; without atEOF nothing is decoded. With atEOF every read is a
// message of its own: that is the demo device's (lack of) framing, so a
// message split over two reads becomes two messages.
func TestDemoPartial(t *testing.T) {
	c := Demo()
	in := []byte("dev-1|temp=21\n")
	for i := range len(in) {
		if _, n, err := c.Decode(in[:i], false); !errors.Is(err, ErrIncomplete) || n != 0 {
			t.Fatalf("Decode(first %d bytes) = n %d, err %v", i, n, err)
		}
	}
	if f, n, err := c.Decode(in, false); err != nil || n != len(in) || string(f.Content) != "temp=21" {
		t.Fatalf("Decode(all) = %+v, %d, %v", f, n, err)
	}
	f, n, err := c.Decode(in[:9], true)
	if err != nil || n != 9 || f.NodeID != "dev-1" || string(f.Content) != "tem" {
		t.Fatalf("Decode(split at EOF) = %+v, %d, %v", f, n, err)
	}
	if _, n, err := c.Decode(nil, true); !errors.Is(err, ErrIncomplete) || n != 0 {
		t.Fatalf("Decode(empty, atEOF) = n %d, err %v", n, err)
	}
}

func TestDemoTooLargeAtEOF(t *testing.T) {
	c := NewDemo(16)
	if f, n, err := c.Decode([]byte("dev|0123456789ab"), true); err != nil || n != 16 || string(f.Content) != "0123456789ab" {
		t.Fatalf("16 bytes at EOF: %+v, %d, %v", f, n, err)
	}
	_, n, err := c.Decode([]byte("dev|0123456789abc"), true)
	var fe *Error
	if !errors.As(err, &fe) || !fe.Fatal || fe.Code != CodeTooLarge || n != 0 {
		t.Fatalf("17 bytes at EOF: n %d, err %v", n, err)
	}
}

func TestDemoEncodeNonUTF8(t *testing.T) {
	if _, err := Demo().AppendEncode(nil, Frame{Type: TypeMessage, Content: []byte{0xff}}); !errors.Is(err, ErrCannotCarry) {
		t.Fatalf("err = %v", err)
	}
}

func TestDemoEncodeCompactsJSON(t *testing.T) {
	f := Frame{Type: TypeCommand, RequestID: "r1", CommandName: "c", Paras: []byte("{\n  \"a b\": \"x\\\" y\",\n  \"n\": 1\n}")}
	got, err := Demo().AppendEncode(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"service_id":"","command_name":"c","paras":{"a b":"x\" y","n":1},"request_id":"r1"}` + "\n"
	if string(got) != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}
