package southbound

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

// recordTransport is a transport that keeps what is written, for driving
// consume without sockets.
type recordTransport struct {
	mu     sync.Mutex
	out    []byte
	closed bool
}

func (t *recordTransport) write(b []byte, cb func(error)) error {
	t.mu.Lock()
	t.out = append(t.out, b...)
	t.mu.Unlock()
	if cb != nil {
		cb(nil)
	}
	return nil
}

func (t *recordTransport) writeOwner(b []byte) { _ = t.write(b, nil) }

func (t *recordTransport) close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
}

func (t *recordTransport) peerName() string { return "" }

func (t *recordTransport) setConn(*Conn) {}

var fuzzCodecs = []string{"jsonl", "binary", "demo"}

// FuzzConsume feeds arbitrary bytes, split at a fuzzer-chosen point, to the
// server's decode-and-dispatch path for each codec. It must never panic,
// always make progress or wait for more, and never keep more than
// MaxFrame plus slack undecoded.
func FuzzConsume(f *testing.F) {
	for _, name := range fuzzCodecs {
		codec, err := frame.New(name, 0)
		if err != nil {
			f.Fatal(err)
		}
		var seed []byte
		for _, fr := range []frame.Frame{
			{Type: frame.TypeHello, NodeID: "n1", Seq: 1},
			{Type: frame.TypeMessage, NodeID: "n1", Content: []byte("hi")},
			report,
			{Type: frame.TypePing, Seq: 3},
			{Type: frame.TypeCommandResponse, RequestID: "r", Paras: json.RawMessage(`{}`)},
		} {
			if b, err := codec.AppendEncode(nil, fr); err == nil {
				seed = append(seed, b...)
			}
		}
		for i := range fuzzCodecs {
			f.Add(uint8(i), uint16(len(seed)/2), seed)
		}
	}
	f.Add(uint8(0), uint16(3), []byte("{\"type\":\"hello\",\"node_id\":\"x\"}\nnot json\n"))
	f.Add(uint8(1), uint16(1), []byte{0xB5, 1, 1, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff})
	f.Add(uint8(2), uint16(0), []byte("dev|x\ndev|y"))

	servers := make(map[string]*Server)
	for _, name := range fuzzCodecs {
		s, err := New(Config{Listen: "127.0.0.1:0", Codec: name, MaxFrame: 1024, Workers: 1, WorkerQueue: 8,
			RatePerSec: 1000, RateBurst: 4, MaxBadFrames: 1000}, nopHandler{}, nil, nil, nil)
		if err != nil {
			f.Fatal(err)
		}
		s.now = func() time.Time { return time.Unix(1, 0) }
		servers[name] = s
	}
	f.Fuzz(func(t *testing.T, which uint8, split uint16, data []byte) {
		s := servers[fuzzCodecs[int(which)%len(fuzzCodecs)]]
		tr := &recordTransport{}
		c := &Conn{tr: tr, w: newWorker(s), id: 1, remote: "127.0.0.1:1"}
		cut := min(int(split), len(data))
		var buf []byte
		for _, chunk := range [][]byte{data[:cut], data[cut:]} {
			buf = append(buf, chunk...)
			used, closeNow := s.consume(c, buf)
			if used < 0 || used > len(buf) {
				t.Fatalf("used %d of %d bytes", used, len(buf))
			}
			if closeNow {
				if c.reason.Load() == uint32(rNone) {
					t.Fatal("close without a reason")
				}
				return
			}
			buf = buf[used:]
			if len(buf) > s.cfg.MaxFrame+frameSlack {
				t.Fatalf("%d undecoded bytes kept, limit %d", len(buf), s.cfg.MaxFrame+frameSlack)
			}
		}
	})
}

// BenchmarkConsume measures the event-loop side of one uplink frame:
// decode, checks, clone, and the hand-off to the worker queue.
func BenchmarkConsume(b *testing.B) {
	for _, name := range []string{"jsonl", "binary"} {
		b.Run(name, func(b *testing.B) {
			s, err := New(Config{Listen: "127.0.0.1:0", Codec: name}, nopHandler{}, nil, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			w := newWorker(s)
			c := &Conn{tr: &recordTransport{}, w: w, id: 1, remote: "127.0.0.1:1"}
			c.phase.Store(phaseBound)
			buf, err := s.codec.AppendEncode(nil, report)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				if used, closeNow := s.consume(c, buf); used != len(buf) || closeNow {
					b.Fatalf("consume used %d of %d, close %v", used, len(buf), closeNow)
				}
				w.mu.Lock()
				_, ok := w.q.pop()
				w.frames--
				w.mu.Unlock()
				if !ok {
					b.Fatal("no frame queued")
				}
			}
		})
	}
}
