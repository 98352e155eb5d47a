package frame

import (
	"bytes"
	"errors"
	"testing"
	"unicode/utf8"
)

// decodeStream feeds data to c as two reads split at split and decodes
// until the input is used up, more is needed, or a fatal error. It fails t
// when Decode breaks the Codec contract: n out of range, no progress, a
// fatal error that consumes, a non-fatal one that does not, or a frame that
// fails validation. The returned frames are clones.
func decodeStream(t *testing.T, c Codec, data []byte, split uint16) []Frame {
	t.Helper()
	cut := int(split) % (len(data) + 1)
	var frames []Frame
	var buf []byte
	for i, chunk := range [][]byte{data[:cut], data[cut:]} {
		atEOF := i == 1
		buf = append(buf, chunk...)
		for calls := 0; ; calls++ {
			if calls > len(data)+1 {
				t.Fatalf("no progress after %d calls", calls)
			}
			f, n, err := c.Decode(buf, atEOF)
			if n < 0 || n > len(buf) {
				t.Fatalf("n = %d for %d bytes", n, len(buf))
			}
			if errors.Is(err, ErrIncomplete) {
				if n != 0 {
					t.Fatalf("ErrIncomplete with n = %d", n)
				}
				break
			}
			var fe *Error
			if err != nil && !errors.As(err, &fe) {
				t.Fatalf("error %v is neither ErrIncomplete nor *Error", err)
			}
			if fe != nil && fe.Fatal {
				if n != 0 {
					t.Fatalf("fatal error with n = %d", n)
				}
				return frames
			}
			if n == 0 {
				t.Fatalf("no progress: n = 0, err %v", err)
			}
			if fe != nil && (fe.Code == CodeNone || !utf8.ValidString(fe.Reason)) {
				t.Fatalf("bad error %+v", fe)
			}
			if err == nil {
				if c.Native() {
					if verr := validate(&f); verr != nil {
						t.Fatalf("decoded frame fails validation: %v", verr)
					}
				}
				frames = append(frames, f.Clone())
			}
			buf = buf[n:]
		}
	}
	return frames
}

// fuzzSeeds adds the encoding of every case, the whole table as one stream,
// and some garbage.
func fuzzSeeds(f *testing.F, c Codec) {
	var stream []byte
	for _, tc := range frameCases() {
		enc, err := c.AppendEncode(nil, tc.f)
		if err != nil {
			continue
		}
		f.Add(enc, uint16(len(enc)/2))
		stream = append(stream, enc...)
	}
	f.Add(stream, uint16(len(stream)/3))
	for _, g := range []string{
		"", "\n", "\r\n", "|", "a|b", "a|b\nc|d", "\xb5", "\xb5\x01", "{}\n", "null\n", "[]\n",
		`{"type":"hello","node_id":"n","v":2}` + "\n",
		"\xb5\x01\x04\x00\x00\x00\x00\x00\xff\xff\xff\xff",
		"\xb5\x01\x04\x00\x00\x00\x00\x00\x00\x00\x00\x03\x12\x01\xff",
	} {
		f.Add([]byte(g), uint16(1))
	}
}

func FuzzDemo(f *testing.F) {
	fuzzSeeds(f, Demo())
	f.Add([]byte("64f1c2a0b2e3_smoke-0001|hello"), uint16(10))
	c := NewDemo(256)
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		for _, fr := range decodeStream(t, c, data, split) {
			if fr.Type != TypeMessage || fr.NodeID == "" || !utf8.Valid(fr.Content) ||
				bytes.ContainsAny([]byte(fr.NodeID), "|\n") || bytes.IndexByte(fr.Content, '\n') >= 0 {
				t.Fatalf("bad demo frame %+v", fr)
			}
		}
	})
}

func FuzzJSONL(f *testing.F) {
	fuzzSeeds(f, JSONL())
	c := NewJSONL(4096)
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		for _, fr := range decodeStream(t, c, data, split) {
			roundTrip(t, JSONL(), fr)
		}
	})
}

func FuzzBinary(f *testing.F) {
	fuzzSeeds(f, Binary())
	c := NewBinary(4096)
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		for _, fr := range decodeStream(t, c, data, split) {
			roundTrip(t, c, fr)
		}
	})
}

// roundTrip checks that a decoded frame re-encodes to something that decodes
// to an equal frame.
func roundTrip(t *testing.T, c Codec, fr Frame) {
	t.Helper()
	enc, err := c.AppendEncode(nil, fr)
	if err != nil {
		t.Fatalf("decoded frame %+v does not encode: %v", fr, err)
	}
	got, n, err := c.Decode(enc, false)
	if err != nil || n != len(enc) {
		t.Fatalf("re-encoded frame does not decode: n %d of %d, err %v\n%q", n, len(enc), err, enc)
	}
	if !equalFrames(got, fr) {
		t.Fatalf("round trip changed the frame\n got %+v\nwant %+v", got, fr)
	}
}
