package frame

import (
	"bytes"
	"errors"
	"testing"
)

func TestByName(t *testing.T) {
	for _, name := range []string{NameDemo, NameJSONL, NameBinary} {
		c, err := ByName(name)
		if err != nil {
			t.Fatalf("ByName(%q): %v", name, err)
		}
		if c.Name() != name {
			t.Errorf("ByName(%q).Name() = %q", name, c.Name())
		}
		if got, want := c.Native(), name != NameDemo; got != want {
			t.Errorf("%s: Native() = %v, want %v", name, got, want)
		}
	}
	for _, name := range []string{"", "JSONL", "json", "protobuf"} {
		if _, err := ByName(name); !errors.Is(err, ErrUnknownCodec) {
			t.Errorf("ByName(%q) error = %v, want ErrUnknownCodec", name, err)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, c := range nativeCodecs() {
		for _, tc := range frameCases() {
			t.Run(c.Name()+"/"+tc.name, func(t *testing.T) {
				prefix := []byte("prefix")
				enc, err := c.AppendEncode(bytes.Clone(prefix), tc.f)
				if err != nil {
					t.Fatalf("AppendEncode: %v", err)
				}
				if !bytes.HasPrefix(enc, prefix) {
					t.Fatalf("AppendEncode overwrote dst: %q", enc)
				}
				enc = enc[len(prefix):]
				for _, atEOF := range []bool{false, true} {
					got, n, err := c.Decode(enc, atEOF)
					if err != nil {
						t.Fatalf("Decode(atEOF=%v): %v\nencoding: %q", atEOF, err, enc)
					}
					if n != len(enc) {
						t.Errorf("Decode used %d of %d bytes", n, len(enc))
					}
					if !equalFrames(got, tc.f) {
						t.Errorf("round trip mismatch\n got %+v\nwant %+v\nencoding %q", got, tc.f, enc)
					}
				}
			})
		}
	}
}

// TestPartialReads feeds every encoding byte by byte: a native decoder says
// ErrIncomplete until the last byte arrives.
func TestPartialReads(t *testing.T) {
	for _, c := range nativeCodecs() {
		for _, tc := range frameCases() {
			enc, err := c.AppendEncode(nil, tc.f)
			if err != nil {
				t.Fatalf("%s/%s: AppendEncode: %v", c.Name(), tc.name, err)
			}
			for i := range len(enc) {
				if _, n, err := c.Decode(enc[:i], false); !errors.Is(err, ErrIncomplete) || n != 0 {
					t.Fatalf("%s/%s: Decode(first %d of %d bytes) = n %d, err %v; want ErrIncomplete", c.Name(), tc.name, i, len(enc), n, err)
				}
			}
		}
	}
}

// TestStream decodes every case from one buffer, as frames arrive
// back to back on a connection.
func TestStream(t *testing.T) {
	for _, c := range nativeCodecs() {
		var stream []byte
		cases := frameCases()
		for _, tc := range cases {
			var err error
			if stream, err = c.AppendEncode(stream, tc.f); err != nil {
				t.Fatalf("%s/%s: AppendEncode: %v", c.Name(), tc.name, err)
			}
		}
		for _, tc := range cases {
			f, n, err := c.Decode(stream, false)
			if err != nil {
				t.Fatalf("%s/%s: Decode: %v", c.Name(), tc.name, err)
			}
			if !equalFrames(f, tc.f) {
				t.Fatalf("%s/%s: got %+v, want %+v", c.Name(), tc.name, f, tc.f)
			}
			stream = stream[n:]
		}
		if _, n, err := c.Decode(stream, true); !errors.Is(err, ErrIncomplete) || n != 0 || len(stream) != 0 {
			t.Fatalf("%s: after the last frame: n %d, err %v, %d bytes left", c.Name(), n, err, len(stream))
		}
	}
}

// TestCrossCodec checks that the native codecs carry the same model: a
// frame decoded from jsonl re-encodes in binary to the same frame.
func TestCrossCodec(t *testing.T) {
	j, b := JSONL(), Binary()
	for _, tc := range frameCases() {
		enc, err := j.AppendEncode(nil, tc.f)
		if err != nil {
			t.Fatal(err)
		}
		fj, _, err := j.Decode(enc, false)
		if err != nil {
			t.Fatal(err)
		}
		enc2, err := b.AppendEncode(nil, fj)
		if err != nil {
			t.Fatalf("%s: binary AppendEncode of the jsonl frame: %v", tc.name, err)
		}
		fb, _, err := b.Decode(enc2, false)
		if err != nil {
			t.Fatal(err)
		}
		if !equalFrames(fb, tc.f) {
			t.Errorf("%s: jsonl -> binary gave %+v", tc.name, fb)
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	bad := []struct {
		name string
		f    Frame
	}{
		{"invalid type", Frame{}},
		{"type out of range", Frame{Type: typeMax + 1}},
		{"hello without node id", Frame{Type: TypeHello}},
		{"challenge without nonce", Frame{Type: TypeChallenge}},
		{"welcome without device id", Frame{Type: TypeWelcome}},
		{"properties without services", Frame{Type: TypeProperties, Seq: 1}},
		{"services not an array", Frame{Type: TypeProperties, Services: []byte(`{"a":1}`)}},
		{"services not JSON", Frame{Type: TypeProperties, Services: []byte(`[1,`)}},
		{"services with white space around", Frame{Type: TypeProperties, Services: []byte(` [1] `)}},
		{"paras array outside shadow", Frame{Type: TypeCommand, RequestID: "r", Paras: []byte(`[1]`)}},
		{"command without request id", Frame{Type: TypeCommand, CommandName: "c"}},
		{"event without event type", Frame{Type: TypeEvent, ServiceID: "s"}},
		{"ack without seq", Frame{Type: TypeAck}},
		{"error without code", Frame{Type: TypeError, Reason: "x"}},
		{"ota offer without size", Frame{Type: TypeOTAOffer, RequestID: "j", Version: "v", Sign: testSign}},
		{"ota chunk without content", Frame{Type: TypeOTAChunk, RequestID: "j"}},
		{"negative offset", Frame{Type: TypeOTAAck, RequestID: "j", Offset: -1}},
	}
	for _, c := range []Codec{Demo(), JSONL(), Binary()} {
		for _, tc := range bad {
			if tc.f.Type == TypeAck || tc.f.Type == TypeChallenge {
				if c.Name() == NameDemo {
					continue // demo writes nothing for these
				}
			}
			dst := []byte("keep")
			out, err := c.AppendEncode(dst, tc.f)
			if !errors.Is(err, ErrCannotCarry) {
				t.Errorf("%s: %s: err = %v, want ErrCannotCarry", c.Name(), tc.name, err)
			}
			if string(out) != "keep" {
				t.Errorf("%s: %s: dst changed to %q", c.Name(), tc.name, out)
			}
		}
	}
	if _, err := JSONL().AppendEncode(nil, Frame{Type: TypeError, Code: 999}); !errors.Is(err, ErrCannotCarry) {
		t.Errorf("jsonl: unknown error code: err = %v", err)
	}
	if _, err := Binary().AppendEncode(nil, Frame{Type: TypeError, Code: 999}); err != nil {
		t.Errorf("binary: unknown error code number should be carried: %v", err)
	}
	if _, err := Binary().AppendEncode(nil, Frame{Type: TypeHello, NodeID: "a\xffb"}); !errors.Is(err, ErrCannotCarry) {
		t.Errorf("binary: non-UTF-8 string: err = %v", err)
	}
}

// TestEncodeLimit: a frame above the codec's limit is not written, because
// the peer would drop the connection on it.
func TestEncodeLimit(t *testing.T) {
	big := Frame{Type: TypeMessage, Content: bytes.Repeat([]byte("x"), 100)}
	for _, c := range []Codec{NewDemo(64), NewJSONL(64), NewBinary(64)} {
		out, err := c.AppendEncode([]byte("keep"), big)
		if !errors.Is(err, ErrCannotCarry) || string(out) != "keep" {
			t.Errorf("%s: out %q, err %v; want dst unchanged and ErrCannotCarry", c.Name(), out, err)
		}
	}
}

func TestTooLarge(t *testing.T) {
	const limit = 64
	for _, c := range []Codec{NewDemo(limit), NewJSONL(limit)} {
		// A line of exactly limit bytes, newline included, is accepted...
		line := append(bytes.Repeat([]byte("a"), limit-1), '\n')
		copy(line, `{"type":"ping"}`)
		line[len(`{"type":"ping"}`)] = ' '
		if c.Name() == NameDemo {
			line[1] = '|'
		}
		if _, n, err := c.Decode(line, false); n != limit || err != nil {
			var fe *Error
			if !errors.As(err, &fe) || fe.Fatal {
				t.Errorf("%s: line of %d bytes: n %d, err %v", c.Name(), limit, n, err)
			}
		}
		// ...one byte more without a newline in reach is fatal, before the
		// newline arrives.
		long := bytes.Repeat([]byte("a"), limit)
		_, n, err := c.Decode(long, false)
		var fe *Error
		if !errors.As(err, &fe) || !fe.Fatal || fe.Code != CodeTooLarge || n != 0 {
			t.Errorf("%s: %d bytes without newline: n %d, err %v; want fatal too_large", c.Name(), limit, n, err)
		}
		if _, _, err := c.Decode(append(long, '\n'), true); !errors.As(err, &fe) || fe.Code != CodeTooLarge {
			t.Errorf("%s: line of %d bytes: err %v; want too_large", c.Name(), limit+1, err)
		}
	}

	// Binary rejects on the header alone.
	hdr := []byte{BinaryMagic, Version, byte(TypeMessage), 0, 0, 0, 0, 1, 0, 0, 0, limit - MaxHeaderLen + 1}
	_, n, err := NewBinary(limit).Decode(hdr, false)
	var fe *Error
	if !errors.As(err, &fe) || !fe.Fatal || fe.Code != CodeTooLarge || n != 0 {
		t.Errorf("binary: header declaring %d bytes: n %d, err %v; want fatal too_large", limit+1, n, err)
	}
	hdr[11]--
	if _, n, err := NewBinary(limit).Decode(hdr, false); !errors.Is(err, ErrIncomplete) || n != 0 {
		t.Errorf("binary: header declaring %d bytes: n %d, err %v; want ErrIncomplete", limit, n, err)
	}
	hdr[8] = 0xff // 4 GiB
	if _, _, err := Binary().Decode(hdr, false); !errors.As(err, &fe) || fe.Code != CodeTooLarge {
		t.Errorf("binary: header declaring 4 GiB: err %v; want too_large", err)
	}
}

func TestDefaultLimit(t *testing.T) {
	for _, c := range []Codec{NewDemo(-1), NewJSONL(0), NewBinary(0)} {
		f := Frame{Type: TypeMessage, Content: bytes.Repeat([]byte("x"), DefaultMaxFrame)}
		if _, err := c.AppendEncode(nil, f); !errors.Is(err, ErrCannotCarry) {
			t.Errorf("%s: frame above DefaultMaxFrame encoded: %v", c.Name(), err)
		}
		f.Content = f.Content[:DefaultMaxFrame-100]
		if _, err := c.AppendEncode(nil, f); err != nil {
			t.Errorf("%s: frame below DefaultMaxFrame refused: %v", c.Name(), err)
		}
	}
}

func TestProof(t *testing.T) {
	if got := Proof(testSecret, testNonce, testNodeID); got != testProof {
		t.Fatalf("Proof = %s, want %s", got, testProof)
	}
	ok := []string{testProof, string(bytes.ToUpper([]byte(testProof)))}
	for _, p := range ok {
		if !CheckProof(testSecret, testNonce, testNodeID, p) {
			t.Errorf("CheckProof(%s) = false", p)
		}
	}
	bad := []struct {
		secret, nonce []byte
		node, proof   string
	}{
		{[]byte("other"), testNonce, testNodeID, testProof},
		{testSecret, testNonce[1:], testNodeID, testProof},
		{testSecret, testNonce, "smoke-0002", testProof},
		{testSecret, testNonce, testNodeID, testProof[:62]},
		{testSecret, testNonce, testNodeID, ""},
		{testSecret, testNonce, testNodeID, "zz" + testProof[2:]},
		{testSecret, testNonce, testNodeID, testProof + "00"},
	}
	for i, b := range bad {
		if CheckProof(b.secret, b.nonce, b.node, b.proof) {
			t.Errorf("bad case %d accepted", i)
		}
	}
}

// TestZeroAllocs locks the allocation-free paths: binary decoding of a
// frame without string fields and encoding into a buffer with room.
func TestZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	f := Frame{Type: TypeProperties, Seq: 42, Services: testServices}
	for _, c := range []Codec{JSONL(), Binary()} {
		buf := make([]byte, 0, 1024)
		if n := testing.AllocsPerRun(100, func() {
			if _, err := c.AppendEncode(buf[:0], f); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("%s: AppendEncode allocates %v times", c.Name(), n)
		}
	}
	c := Binary()
	enc, err := c.AppendEncode(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() {
		if _, _, err := c.Decode(enc, false); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("binary: Decode allocates %v times", n)
	}
}
