package southbound

import (
	"errors"

	"github.com/subgate/subgate/southbound/frame"
)

// frameSlack is how far past MaxFrame an undecoded prefix may grow before
// it is refused: room for a header or a line end around a frame of
// MaxFrame bytes. The codecs refuse oversize frames themselves; this is
// the server's own bound on a connection's inbound buffer.
const frameSlack = 64

// consume decodes the frames in buf and dispatches them. It runs on the
// connection's reading goroutine (a gnet loop inside OnTraffic, or the
// TLS reader) and never blocks. It returns the bytes used and whether the
// connection must close now (an error frame is then already written).
// Frames leave buf only as clones.
func (s *Server) consume(c *Conn, buf []byte) (used int, closeNow bool) {
	c.lastSeen.Store(s.now().UnixNano())
	defer func() { s.m.bytesIn.Add(float64(used)) }()
	for used < len(buf) {
		if c.closing() {
			// Nothing more is read from a closing connection.
			return len(buf), false
		}
		f, n, err := s.codec.Decode(buf[used:], false)
		if errors.Is(err, frame.ErrIncomplete) {
			if s.native {
				if len(buf)-used > s.cfg.MaxFrame+frameSlack {
					s.m.limitHits[lMaxFrame].Inc()
					s.m.decodeError(frame.CodeTooLarge)
					s.closeOwner(c, rTooLarge, frame.CodeTooLarge, "frame too large", 0)
					return used, true
				}
				return used, false
			}
			// Demo: a message without a line end ends with the read
			// (iotda-protocol §6.1, one message per write).
			f, n, err = s.codec.Decode(buf[used:], true)
			if errors.Is(err, frame.ErrIncomplete) {
				return used, false
			}
		}
		if err != nil {
			var fe *frame.Error
			if !errors.As(err, &fe) {
				fe = &frame.Error{Code: frame.CodeBadFrame, Reason: "undecodable input", Fatal: n <= 0}
			}
			if fe.Fatal || n <= 0 || n > len(buf)-used {
				s.m.decodeError(fe.Code)
				r := rBadFrames
				if fe.Code == frame.CodeTooLarge {
					r = rTooLarge
					s.m.limitHits[lMaxFrame].Inc()
				}
				s.warn.emit("bad frame", "remote", c.remote, "err", err)
				s.closeOwner(c, r, fe.Code, fe.Reason, 0)
				return len(buf), true
			}
			used += n
			if !s.badFrame(c, fe.Code, fe.Reason, 0) {
				return used, true
			}
			continue
		}
		if n <= 0 || n > len(buf)-used {
			// A codec that makes no progress would spin the loop.
			s.closeOwner(c, rBadFrames, frame.CodeInternal, "decoder error", 0)
			return len(buf), true
		}
		used += n
		if !s.dispatch(c, f) {
			return used, true
		}
	}
	// A close begun elsewhere (a worker refusing the login, a kick) is
	// not ours to hurry: its error frame is still queued behind us.
	return used, false
}

// overRate answers a frame over the device's rate: an error frame, and a
// close after RateStrikes in a row. It returns false when the connection
// must close.
func (s *Server) overRate(c *Conn, f frame.Frame) bool {
	s.m.limitHits[lRate].Inc()
	c.strikes++
	if int(c.strikes) >= s.cfg.RateStrikes {
		s.warn.emit("rate limit", "remote", c.remote, "device_id", c.NodeID(), "n", c.strikes)
		s.closeOwner(c, rRateLimited, frame.CodeRateLimited, "persistently over the rate limit", f.Seq)
		return false
	}
	c.sendOwner(frame.Frame{Type: frame.TypeError, Code: frame.CodeRateLimited, Reason: "rate limited", Seq: f.Seq})
	return true
}

// upTypes are the frame types a device may send.
var upTypes = func() (t [256]bool) {
	for _, x := range []frame.Type{
		frame.TypeHello, frame.TypeMessage, frame.TypeProperties, frame.TypeEvent,
		frame.TypeCommandResponse, frame.TypePropertySetResponse, frame.TypePropertyGetResponse,
		frame.TypeShadowGet, frame.TypePing, frame.TypePong, frame.TypeOTAAck, frame.TypeOTAResult,
	} {
		t[x] = true
	}
	return t
}()

// dispatch handles one decoded frame on the reading goroutine. It returns
// false when the connection must close.
func (s *Server) dispatch(c *Conn, f frame.Frame) bool {
	s.m.frameIn(f.Type)
	switch f.Type {
	case frame.TypePing:
		// Pings count toward the device's rate like any frame: a device
		// that reads could otherwise make the gateway decode and answer
		// pings without bound.
		if s.cfg.RatePerSec > 0 && !s.takeToken(c) {
			return s.overRate(c, f)
		}
		c.bad = 0
		c.sendOwner(frame.Frame{Type: frame.TypePong, Seq: f.Seq})
		return true
	case frame.TypePong:
		c.bad = 0
		return true
	}
	if s.native {
		if !upTypes[f.Type] {
			return s.badFrame(c, frame.CodeUnsupported, "frame type not accepted from devices", f.Seq)
		}
		phase := c.phase.Load()
		if f.Type == frame.TypeHello {
			if phase != phaseNew {
				return s.badFrame(c, frame.CodeBadFrame, "already logged in", f.Seq)
			}
			c.phase.Store(phaseHello)
			if !s.enqueue(c, f) {
				c.phase.Store(phaseNew)
			}
			c.bad = 0
			return true
		}
		if phase == phaseNew {
			return s.badFrame(c, frame.CodeNotLoggedIn, "send a hello first", f.Seq)
		}
	}
	if s.cfg.RatePerSec > 0 && !s.takeToken(c) {
		return s.overRate(c, f)
	}
	c.strikes = 0
	c.bad = 0
	s.enqueue(c, f)
	return true
}

// enqueue hands a clone of f to c's worker. On a full queue it answers
// busy (with f's Seq) and reports false.
func (s *Server) enqueue(c *Conn, f frame.Frame) bool {
	if c.w.push(item{c: c, kind: itemFrame, f: f.Clone()}) {
		return true
	}
	s.m.limitHits[lWorkerQueue].Inc()
	c.sendOwner(frame.Frame{Type: frame.TypeError, Code: frame.CodeBusy, Reason: "busy, retry later", Seq: f.Seq})
	return false
}

// badFrame answers a bad but non-fatal frame and counts it; after
// MaxBadFrames in a row it closes the connection (returns false).
func (s *Server) badFrame(c *Conn, code frame.ErrorCode, reason string, seq uint32) bool {
	s.m.decodeError(code)
	c.bad++
	if int(c.bad) >= s.cfg.MaxBadFrames {
		s.warn.emit("bad frame", "remote", c.remote, "err", "too many bad frames", "n", c.bad)
		s.closeOwner(c, rBadFrames, code, "too many bad frames: "+reason, seq)
		return false
	}
	c.sendOwner(frame.Frame{Type: frame.TypeError, Code: code, Reason: reason, Seq: seq})
	return true
}

// takeToken takes one token from c's bucket (RatePerSec, RateBurst).
func (s *Server) takeToken(c *Conn) bool {
	now := s.now().UnixNano()
	burst := float64(s.cfg.RateBurst)
	tokens := float64(c.tokens)
	if c.tokensAt == 0 {
		tokens = burst
	} else if dt := now - c.tokensAt; dt > 0 {
		tokens = min(burst, tokens+float64(dt)*s.cfg.RatePerSec/1e9)
	}
	c.tokensAt = now
	if tokens < 1 {
		c.tokens = float32(tokens)
		return false
	}
	c.tokens = float32(tokens - 1)
	return true
}
