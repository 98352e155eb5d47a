package main

import "time"

// maxOutOfOrder bounds the segments a stream keeps while it waits for a
// missing one; beyond it the stream is given up as having a gap.
const maxOutOfOrder = 1024

// Stream is one TCP connection's client-to-server bytes, cut into MQTT
// packets.
type Stream struct {
	Client    string
	Publishes []time.Time // capture time of each PUBLISH's last byte

	synSeen   bool
	gap       bool // bytes missing: the rest cannot be framed
	malformed bool // not MQTT
	next      uint32
	ooo       map[uint32][]byte

	hdr     []byte // the fixed header being read (at most 5 bytes)
	skip    int    // bytes left of the current packet's body
	publish bool   // the current packet is a PUBLISH
}

// segment adds one TCP segment captured at ts.
func (s *Stream) segment(ts time.Time, seg tcpSegment) {
	if seg.syn {
		s.synSeen = true
		s.next = seg.seq + 1
		return
	}
	if !s.synSeen || s.gap || s.malformed || len(seg.payload) == 0 {
		return
	}
	s.place(ts, seg.seq, seg.payload)
	for len(s.ooo) > 0 && !s.gap && !s.malformed {
		progressed := false
		for seq, data := range s.ooo {
			if int32(s.next-seq) >= 0 {
				delete(s.ooo, seq)
				s.place(ts, seq, data)
				progressed = true
				break
			}
		}
		if !progressed {
			break
		}
	}
}

// place feeds the part of data (starting at sequence number seq) that is
// new, or keeps it for later when it starts beyond what was seen.
func (s *Stream) place(ts time.Time, seq uint32, data []byte) {
	switch d := int32(s.next - seq); {
	case d > 0: // starts inside what was seen: a retransmission
		if int(d) >= len(data) {
			return
		}
		data = data[d:]
	case d < 0: // beyond a missing segment
		if s.ooo == nil {
			s.ooo = map[uint32][]byte{}
		}
		if len(s.ooo) >= maxOutOfOrder {
			s.gap = true
			return
		}
		s.ooo[seq] = append([]byte(nil), data...)
		return
	}
	s.next += uint32(len(data))
	s.feed(ts, data)
}

// feed frames in-order stream bytes into MQTT packets. A packet counts at
// ts, the capture time of the segment that brought its last byte.
func (s *Stream) feed(ts time.Time, b []byte) {
	for len(b) > 0 {
		if s.skip > 0 {
			n := min(s.skip, len(b))
			s.skip -= n
			b = b[n:]
			if s.skip == 0 {
				s.done(ts)
			}
			continue
		}
		s.hdr = append(s.hdr, b[0])
		b = b[1:]
		if len(s.hdr) < 2 {
			continue
		}
		// Remaining length: 1 to 4 bytes, 7 bits each (MQTT 3.1.1 §2.2.3).
		rl, mul, complete := 0, 1, false
		for _, c := range s.hdr[1:] {
			rl += int(c&0x7f) * mul
			mul *= 128
			if c&0x80 == 0 {
				complete = true
				break
			}
		}
		if !complete {
			if len(s.hdr) == 5 {
				s.malformed = true
				return
			}
			continue
		}
		typ := s.hdr[0] >> 4
		if typ == 0 {
			s.malformed = true // reserved packet type
			return
		}
		s.publish = typ == 3
		s.hdr = s.hdr[:0]
		s.skip = rl
		if rl == 0 {
			s.done(ts)
		}
	}
}

func (s *Stream) done(ts time.Time) {
	if s.publish {
		s.Publishes = append(s.Publishes, ts)
	}
	s.publish = false
}
