package southbound

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

// The TLS listener serves devices that authenticate with a client
// certificate. crypto/tls needs blocking reads, so each TLS connection
// costs two goroutines (a reader that also owns decoding, and a writer),
// unlike gnet connections; they feed the same workers and session table.

// tlsReadChunk is the initial and minimum read buffer of a TLS connection.
const tlsReadChunk = 4 << 10

// acceptTLS accepts until ln is closed. Each connection's goroutines are
// added to wg.
func (s *Server) acceptTLS(ln net.Listener, wg *sync.WaitGroup) {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.stopping.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors and the like: back off, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.warn.emit("accept failed", "err", err, "dur", backoff)
			t := time.NewTimer(backoff)
			<-t.C
			continue
		}
		backoff = 0
		wg.Go(func() { s.serveTLS(nc, wg) })
	}
}

// serveTLS runs the reader of one TLS connection.
func (s *Server) serveTLS(nc net.Conn, wg *sync.WaitGroup) {
	tr := &tlsTransport{s: s, nc: tls.Server(nc, s.tlsConf), wake: make(chan struct{}, 1), dead: make(chan struct{})}
	c, _, _ := s.admit(nc.RemoteAddr().String(), tr)
	if c == nil {
		// The refusal cannot be framed before the handshake: just close.
		_ = nc.Close()
		return
	}
	wg.Go(tr.writeLoop)
	err := s.readTLS(c, tr)
	tr.close()
	<-tr.dead
	s.closed(c, err)
}

// readTLS does the handshake and then reads and decodes until the
// connection fails or must close. It returns the read error, if any.
func (s *Server) readTLS(c *Conn, tr *tlsTransport) error {
	tc := tr.nc
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HelloTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		if !c.closing() {
			s.m.rejects[rjAuthFailed].Inc()
			s.warn.emit("login refused", "remote", c.remote, "err", err)
			c.reason.CompareAndSwap(uint32(rNone), uint32(rRejected))
		}
		return nil
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 || certs[0].Subject.CommonName == "" {
		s.m.rejects[rjAuthFailed].Inc()
		s.warn.emit("login refused", "remote", c.remote, "err", "client certificate without common name")
		s.closeOwner(c, rRejected, frame.CodeAuthFailed, "certificate has no common name", 0)
		return nil
	}
	tr.cn = certs[0].Subject.CommonName
	tr.hsOK.Store(true)

	buf := make([]byte, 0, tlsReadChunk)
	limit := s.cfg.MaxFrame + frameSlack + tlsReadChunk
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= limit {
				// consume refuses a prefix above MaxFrame before this.
				s.closeOwner(c, rTooLarge, frame.CodeTooLarge, "frame too large", 0)
				return nil
			}
			nb := make([]byte, len(buf), min(2*cap(buf), limit))
			copy(nb, buf)
			buf = nb
		}
		n, err := tc.Read(buf[len(buf):cap(buf)])
		if n > 0 {
			buf = buf[:len(buf)+n]
			used, closeNow := s.consume(c, buf)
			rest := copy(buf, buf[used:])
			buf = buf[:rest]
			if closeNow {
				return nil
			}
			if rest == 0 && cap(buf) > tlsReadChunk {
				buf = make([]byte, 0, tlsReadChunk)
			}
		}
		if err != nil {
			if c.closing() {
				return nil
			}
			return err
		}
	}
}

// tlsTransport is a transport over a TLS connection. Writes are queued
// and written by writeLoop, so Send never blocks.
type tlsTransport struct {
	s    *Server
	nc   *tls.Conn
	c    *Conn
	cn   string        // set by the reader after the handshake
	hsOK atomic.Bool   // the handshake completed; nothing is written before
	wake chan struct{} // capacity 1
	dead chan struct{} // closed when writeLoop closed nc and returned

	// mu guards the following fields.
	mu      sync.Mutex
	q       []tlsWrite
	closing bool
	failed  bool
}

type tlsWrite struct {
	b  []byte
	cb func(error)
}

func (t *tlsTransport) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *tlsTransport) write(b []byte, cb func(error)) error {
	t.mu.Lock()
	if t.closing || t.failed {
		t.mu.Unlock()
		return ErrClosed
	}
	t.q = append(t.q, tlsWrite{b, cb})
	t.mu.Unlock()
	t.signal()
	return nil
}

func (t *tlsTransport) writeOwner(b []byte) { _ = t.write(b, nil) }

func (t *tlsTransport) close() {
	t.mu.Lock()
	t.closing = true
	t.mu.Unlock()
	t.signal()
}

func (t *tlsTransport) peerName() string { return t.cn }

func (t *tlsTransport) setConn(c *Conn) { t.c = c }

// writeLoop writes queued bytes in order; once close was asked and the
// queue is empty, or a write failed, it closes the connection (which ends
// the reader) and fails what is left.
func (t *tlsTransport) writeLoop() {
	defer close(t.dead)
	var werr error
	for {
		t.mu.Lock()
		batch, closing := t.q, t.closing
		t.q = nil
		t.mu.Unlock()
		for _, w := range batch {
			if werr == nil && !t.hsOK.Load() {
				// Only an error frame before a refusal can come here;
				// writing it would wait for a handshake that may never
				// complete.
				werr = ErrClosed
			}
			if werr == nil {
				_ = t.nc.SetWriteDeadline(time.Now().Add(t.s.cfg.WriteTimeout))
				_, werr = t.nc.Write(w.b)
				var ne net.Error
				if errors.As(werr, &ne) && ne.Timeout() {
					t.s.m.limitHits[lOutbound].Inc()
					t.c.reason.CompareAndSwap(uint32(rNone), uint32(rSlowReader))
				}
			}
			if w.cb != nil {
				if werr != nil {
					w.cb(ErrClosed)
				} else {
					w.cb(nil)
				}
			}
		}
		if werr != nil || (closing && len(batch) == 0) {
			break
		}
		if len(batch) == 0 {
			<-t.wake
		}
	}
	t.mu.Lock()
	t.failed = true
	rest := t.q
	t.q = nil
	t.mu.Unlock()
	for _, w := range rest {
		if w.cb != nil {
			w.cb(ErrClosed)
		}
	}
	_ = t.nc.Close()
}
