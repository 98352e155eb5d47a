package main

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
)

// capture builds a pcap file (Ethernet, IPv4, nanosecond timestamps).
type capture struct {
	buf  bytes.Buffer
	link uint32
}

func newCapture(nanos bool) *capture { return newCaptureLink(nanos, linkEthernet) }

func newCaptureLink(nanos bool, link uint32) *capture {
	c := &capture{link: link}
	var gh [24]byte
	magic := uint32(0xa1b2c3d4)
	if nanos {
		magic = 0xa1b23c4d
	}
	binary.LittleEndian.PutUint32(gh[0:], magic)
	binary.LittleEndian.PutUint16(gh[4:], 2)
	binary.LittleEndian.PutUint16(gh[6:], 4)
	binary.LittleEndian.PutUint32(gh[16:], 262144)
	binary.LittleEndian.PutUint32(gh[20:], link)
	c.buf.Write(gh[:])
	return c
}

// segment appends a TCP segment from 127.0.0.2:srcPort to 127.0.0.1:dstPort.
func (c *capture) segment(t time.Time, nanos bool, srcPort, dstPort uint16, seq uint32, syn bool, payload []byte) {
	tcp := make([]byte, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:], srcPort)
	binary.BigEndian.PutUint16(tcp[2:], dstPort)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 5 << 4
	tcp[13] = 0x10 // ACK
	if syn {
		tcp[13] = 0x02
	}
	copy(tcp[20:], payload)
	ip := make([]byte, 20+len(tcp))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8], ip[9] = 64, 6
	copy(ip[12:], []byte{127, 0, 0, 2})
	copy(ip[16:], []byte{127, 0, 0, 1})
	copy(ip[20:], tcp)
	var frame []byte
	switch c.link {
	case linkEthernet:
		frame = make([]byte, 14, 14+len(ip))
		binary.BigEndian.PutUint16(frame[12:], 0x0800)
	case linkSLL:
		frame = make([]byte, 16, 16+len(ip))
		binary.BigEndian.PutUint16(frame[14:], 0x0800)
	case linkSLL2:
		frame = make([]byte, 20, 20+len(ip))
		binary.BigEndian.PutUint16(frame[0:], 0x0800)
	case linkRaw:
	case linkNull:
		frame = binary.LittleEndian.AppendUint32(nil, 2)
	}
	frame = append(frame, ip...)
	var rh [16]byte
	frac := t.Nanosecond()
	if !nanos {
		frac /= 1000
	}
	binary.LittleEndian.PutUint32(rh[0:], uint32(t.Unix()))
	binary.LittleEndian.PutUint32(rh[4:], uint32(frac))
	binary.LittleEndian.PutUint32(rh[8:], uint32(len(frame)))
	binary.LittleEndian.PutUint32(rh[12:], uint32(len(frame)))
	c.buf.Write(rh[:])
	c.buf.Write(frame)
}

// mqttPacket returns a packet of type typ with a body of n bytes.
func mqttPacket(typ byte, n int) []byte {
	p := []byte{typ << 4}
	for rl := n; ; {
		b := byte(rl % 128)
		rl /= 128
		if rl > 0 {
			p = append(p, b|0x80)
			continue
		}
		p = append(p, b)
		break
	}
	return append(p, make([]byte, n)...)
}

func TestCountFramesPublishesAcrossSegments(t *testing.T) {
	for _, nanos := range []bool{true, false} {
		t0 := time.Unix(1_700_000_000, 0)
		at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
		c := newCapture(nanos)
		const port = 1883
		var seq uint32 = 1000
		c.segment(at(0), nanos, 40000, port, seq, true, nil)
		seq++
		// CONNECT, then a 20,000-byte PUBLISH cut in three segments, a
		// retransmission of the second, a PINGREQ and a small PUBLISH
		// that arrive out of order, and traffic of another port.
		stream := append(mqttPacket(1, 30), mqttPacket(3, 20_000)...)
		first, second := stream[:10_000], stream[10_000:15_000]
		third := stream[15_000:]
		c.segment(at(1), nanos, 40000, port, seq, false, first)
		c.segment(at(2), nanos, 40000, port, seq+10_000, false, second)
		c.segment(at(3), nanos, 40000, port, seq+10_000, false, second) // retransmitted
		c.segment(at(4), nanos, 40000, port, seq+15_000, false, third)  // PUBLISH 1 complete
		seq += uint32(len(stream))
		ping, small := mqttPacket(12, 0), mqttPacket(3, 100)
		c.segment(at(5), nanos, 40000, port, seq+uint32(len(ping)), false, small) // early
		c.segment(at(6), nanos, 40000, port, seq, false, ping)                    // PUBLISH 2 complete
		c.segment(at(7), nanos, 50000, 8080, 1, false, mqttPacket(3, 10))         // other port
		c.buf.Write([]byte{1, 2, 3})                                              // cut last record

		streams, err := Count(&c.buf, port)
		if err != nil {
			t.Fatal(err)
		}
		if len(streams) != 1 {
			t.Fatalf("%d streams, want 1", len(streams))
		}
		s := streams[0]
		if s.Client != "127.0.0.2:40000" || s.gap || s.malformed {
			t.Fatalf("stream %+v", s)
		}
		want := []time.Time{at(4), at(6)}
		if len(s.Publishes) != len(want) {
			t.Fatalf("nanos=%v: publishes at %v, want %v", nanos, s.Publishes, want)
		}
		for i := range want {
			if !s.Publishes[i].Equal(want[i]) {
				t.Fatalf("nanos=%v: publish %d at %v, want %v", nanos, i, s.Publishes[i], want[i])
			}
		}
	}
}

func TestCountLinkTypes(t *testing.T) {
	for _, link := range []uint32{linkEthernet, linkSLL, linkSLL2, linkRaw, linkNull} {
		c := newCaptureLink(true, link)
		c.segment(time.Unix(1, 0), true, 40000, 1883, 7, true, nil)
		c.segment(time.Unix(1, 5), true, 40000, 1883, 8, false, append(mqttPacket(1, 12), mqttPacket(3, 40)...))
		streams, err := Count(&c.buf, 1883)
		if err != nil {
			t.Fatalf("link %d: %v", link, err)
		}
		if len(streams) != 1 || len(streams[0].Publishes) != 1 || !streams[0].Publishes[0].Equal(time.Unix(1, 5)) {
			t.Fatalf("link %d: streams %+v", link, streams)
		}
	}
}

func TestCountWithoutSYNIsUnparsed(t *testing.T) {
	c := newCapture(true)
	c.segment(time.Unix(1, 0), true, 40000, 1883, 5, false, mqttPacket(3, 10))
	streams, err := Count(&c.buf, 1883)
	if err != nil {
		t.Fatal(err)
	}
	r := Analyze(streams, 50, time.Second, time.Time{}, time.Time{})
	if r.Unparsed != 1 || r.Publishes != 0 {
		t.Fatalf("report %+v", r)
	}
}

func TestCountRejectsOtherFiles(t *testing.T) {
	if _, err := Count(bytes.NewReader([]byte("\x0a\x0d\x0d\x0apcapng-ish-header-bytes")), 1883); err == nil {
		t.Fatal("a pcapng file was read as pcap")
	}
	if _, err := Count(bytes.NewReader(nil), 1883); err == nil {
		t.Fatal("an empty file was read")
	}
}

func TestAnalyzeSlidingWindow(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	var ts []time.Time
	// 3 publishes per 100 ms for a second: 30 in the first second; then
	// a burst of 4 within 10 ms.
	for i := range 30 {
		ts = append(ts, t0.Add(time.Duration(i/3)*100*time.Millisecond))
	}
	burst := t0.Add(5 * time.Second)
	for i := range 4 {
		ts = append(ts, burst.Add(time.Duration(i)*time.Millisecond*3))
	}
	s := &Stream{Client: "c", Publishes: ts, synSeen: true}
	r := Analyze([]*Stream{s}, 3, 100*time.Millisecond, time.Time{}, time.Time{})
	// cap 3 per 100 ms: the 30 spaced publishes fit (each 4th is exactly
	// 100 ms after the first of its group), the burst's 4th does not.
	if r.Violations != 1 || r.MaxInWindow != 4 {
		t.Fatalf("violations %d, max %d; want 1, 4 (%+v)", r.Violations, r.MaxInWindow, r)
	}
	if r.TightestMs != 9 || !r.TightestAt.Equal(burst) {
		t.Fatalf("tightest %v ms at %v", r.TightestMs, r.TightestAt)
	}
	// The window bounds keep only the spaced part.
	r = Analyze([]*Stream{s}, 3, 100*time.Millisecond, t0, t0.Add(2*time.Second))
	if r.Publishes != 30 || r.Violations != 0 || r.MaxInWindow != 3 {
		t.Fatalf("bounded: %+v", r)
	}
}

func FuzzCount(f *testing.F) {
	c := newCapture(true)
	c.segment(time.Unix(1, 0), true, 40000, 1883, 7, true, nil)
	c.segment(time.Unix(1, 1), true, 40000, 1883, 8, false, append(mqttPacket(1, 12), mqttPacket(3, 40)...))
	f.Add(c.buf.Bytes())
	f.Add([]byte{0xd4, 0xc3, 0xb2, 0xa1})
	f.Fuzz(func(t *testing.T, b []byte) {
		streams, _ := Count(bytes.NewReader(b), 1883)
		r := Analyze(streams, 50, time.Second, time.Time{}, time.Time{})
		n := 0
		for _, s := range streams {
			n += len(s.Publishes)
		}
		if r.Publishes != n {
			t.Fatalf("report counts %d publishes, streams hold %d", r.Publishes, n)
		}
	})
}
