// Package southboundtest is a device-side client of subgate's southbound
// protocol (docs/device-protocol.md), for tests, the load generator and
// device makers trying their firmware logic against a gateway.
//
// A Client owns one TCP (or TLS) connection and one reader goroutine,
// started by Dial and stopped and waited for by Close. The reader decodes
// what the gateway sends into a bounded queue that Recv takes from; when the
// queue is full the reader stops reading, so a test that does not Recv
// pushes back on the gateway like a slow device would. Send, SendRaw, Recv
// and Close are safe for concurrent use.
package southboundtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

// Defaults for zero Options fields.
const (
	DefaultDialTimeout  = 5 * time.Second
	DefaultWriteTimeout = 10 * time.Second
	DefaultRecvQueue    = 64
)

// readChunk is the initial size of the read buffer; it grows up to the
// frame size limit only when a frame needs it, so a hundred thousand idle
// clients stay small.
const readChunk = 4 << 10

// Errors of the client.
var (
	// ErrClosed is returned by Recv and Send after Close.
	ErrClosed = errors.New("southboundtest: client closed")
	// ErrNoHello is returned by Hello on a demo connection: the demo
	// protocol has no session frames.
	ErrNoHello = errors.New("southboundtest: the demo protocol has no hello")
	// ErrUnexpected is returned by Hello when the gateway sends a frame
	// that has no place in the handshake.
	ErrUnexpected = errors.New("southboundtest: unexpected frame")
	// ErrOptions reports unusable Options.
	ErrOptions = errors.New("southboundtest: bad options")
)

// Options configure a Client. Addr and Codec are required.
type Options struct {
	// Addr is the gateway's southbound address, host:port.
	Addr string
	// Codec is "demo", "jsonl" or "binary".
	Codec string
	// NodeID, ProductID, FwVersion and SwVersion go into the hello. With
	// demo, NodeID is the id written before '|' when a sent frame has none
	// (the Huawei demo device writes its full device id there).
	NodeID, ProductID, FwVersion, SwVersion string
	// Secret, when non-nil, makes Hello wait for a challenge and send the
	// token proof (frame.Proof).
	Secret []byte
	// TLSConfig, when non-nil, makes Dial use TLS (mTLS devices put their
	// certificate in it).
	TLSConfig *tls.Config
	// LocalAddr is an optional source IP, such as "127.0.0.5", to spread
	// many clients over 127.0.0.0/8 and its port space.
	LocalAddr string
	// DialTimeout bounds connecting and the TLS handshake (0: 5 s).
	DialTimeout time.Duration
	// WriteTimeout bounds each write (0: 10 s).
	WriteTimeout time.Duration
	// MaxFrame is the frame size limit in both directions (0: the codec's
	// default, frame.DefaultMaxFrame).
	MaxFrame int
	// RecvQueue is how many decoded frames wait for Recv before the reader
	// stops reading (0: 64).
	RecvQueue int
	// ManualPong turns off the automatic pong: pings then reach Recv and
	// the caller answers them, or not, to test idle timeouts.
	ManualPong bool
	// DemoNewline appends "\n" to each demo message, as nc does; the Huawei
	// demo device sends none.
	DemoNewline bool
}

// item is one entry of the receive queue: a frame or a non-fatal decoding
// error.
type item struct {
	f   frame.Frame
	err error
}

// Client is a device connection. Create it with Dial and release it with
// Close.
type Client struct {
	o     Options
	codec frame.Codec
	max   int
	conn  net.Conn

	// wmu guards the following fields and serialises writes.
	wmu  sync.Mutex
	wbuf []byte

	frames     chan item     // closed by the reader when it exits
	done       chan struct{} // closed by Close
	readerDone chan struct{} // closed when the reader has exited
	closeOnce  sync.Once
	closeErr   error
	// err is why the reader stopped; written before frames is closed.
	err error
}

// Dial connects to o.Addr and starts the reader. It does not send a hello.
func Dial(ctx context.Context, o Options) (*Client, error) {
	if o.Addr == "" {
		return nil, fmt.Errorf("%w: Addr is empty", ErrOptions)
	}
	max := o.MaxFrame
	if max <= 0 {
		max = frame.DefaultMaxFrame
	}
	codec, err := frame.New(o.Codec, max)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.RecvQueue <= 0 {
		o.RecvQueue = DefaultRecvQueue
	}
	d := &net.Dialer{Timeout: o.DialTimeout}
	if o.LocalAddr != "" {
		ip := net.ParseIP(o.LocalAddr)
		if ip == nil {
			return nil, fmt.Errorf("%w: LocalAddr %q is not an IP address", ErrOptions, o.LocalAddr)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	var conn net.Conn
	if o.TLSConfig != nil {
		conn, err = (&tls.Dialer{NetDialer: d, Config: o.TLSConfig}).DialContext(ctx, "tcp", o.Addr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", o.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("southboundtest: dial %s: %w", o.Addr, err)
	}
	c := &Client{
		o: o, codec: codec, max: max, conn: conn,
		frames:     make(chan item, o.RecvQueue),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	go c.readLoop()
	return c, nil
}

// LocalAddr returns the client's end of the connection.
func (c *Client) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// Close closes the connection, stops the reader and waits for it. It is
// idempotent; frames still queued can be received afterwards.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.closeErr = c.conn.Close()
		<-c.readerDone
	})
	return c.closeErr
}

// Hello runs the session handshake of the native codecs: with a Secret it
// waits for the challenge and signs it, then sends the hello and waits for
// the welcome, which it returns. An error frame from the gateway is returned
// as a *frame.Error carrying its code. Hello must not run concurrently with
// Recv.
func (c *Client) Hello(ctx context.Context) (frame.Frame, error) {
	if !c.codec.Native() {
		return frame.Frame{}, ErrNoHello
	}
	hello := frame.Frame{
		Type: frame.TypeHello, NodeID: c.o.NodeID, ProductID: c.o.ProductID,
		FwVersion: c.o.FwVersion, SwVersion: c.o.SwVersion,
	}
	if c.o.Secret != nil {
		ch, err := c.await(ctx, frame.TypeChallenge)
		if err != nil {
			return frame.Frame{}, err
		}
		hello.Proof = frame.Proof(c.o.Secret, ch.Nonce, c.o.NodeID)
	}
	if err := c.Send(hello); err != nil {
		return frame.Frame{}, err
	}
	return c.await(ctx, frame.TypeWelcome)
}

// await receives until a frame of type want arrives. A challenge the client
// cannot answer (no Secret) and pings are passed over.
func (c *Client) await(ctx context.Context, want frame.Type) (frame.Frame, error) {
	for {
		f, err := c.Recv(ctx)
		if err != nil {
			return frame.Frame{}, fmt.Errorf("southboundtest: waiting for %s: %w", want, err)
		}
		switch f.Type {
		case want:
			return f, nil
		case frame.TypeError:
			return frame.Frame{}, fmt.Errorf("southboundtest: waiting for %s: %w", want,
				&frame.Error{Code: f.Code, Reason: f.Reason})
		case frame.TypeChallenge, frame.TypePing:
			continue
		}
		return frame.Frame{}, fmt.Errorf("%w: %s while waiting for %s", ErrUnexpected, f.Type, want)
	}
}

// Send encodes f and writes it. With demo only messages can be sent: they
// are written as "<NodeID>|<Content>", using Options.NodeID when f.NodeID is
// empty, and with no newline unless Options.DemoNewline.
func (c *Client) Send(f frame.Frame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var err error
	if c.codec.Native() {
		c.wbuf, err = c.codec.AppendEncode(c.wbuf[:0], f)
	} else {
		c.wbuf, err = c.appendDemo(c.wbuf[:0], f)
	}
	if err != nil {
		return fmt.Errorf("southboundtest: send %s: %w", f.Type, err)
	}
	return c.writeLocked(c.wbuf)
}

// appendDemo writes a demo uplink message, what the Huawei demo device
// sends (iotda-protocol §6.1).
func (c *Client) appendDemo(dst []byte, f frame.Frame) ([]byte, error) {
	if f.Type != frame.TypeMessage {
		return dst, fmt.Errorf("%w: the demo protocol sends only messages", frame.ErrCannotCarry)
	}
	id := f.NodeID
	if id == "" {
		id = c.o.NodeID
	}
	dst = append(dst, id...)
	dst = append(dst, '|')
	dst = append(dst, f.Content...)
	if c.o.DemoNewline {
		dst = append(dst, '\n')
	}
	if len(dst) > c.max {
		return dst[:0], fmt.Errorf("%w: %d bytes above the %d-byte limit", frame.ErrCannotCarry, len(dst), c.max)
	}
	return dst, nil
}

// SendRaw writes b as is, for tests of garbage input.
func (c *Client) SendRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(b)
}

func (c *Client) writeLocked(b []byte) error {
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	if err := c.conn.SetWriteDeadline(time.Now().Add(c.o.WriteTimeout)); err != nil {
		return fmt.Errorf("southboundtest: write: %w", err)
	}
	if _, err := c.conn.Write(b); err != nil {
		return fmt.Errorf("southboundtest: write: %w", err)
	}
	return nil
}

// Recv returns the next frame from the gateway. With demo every line the
// gateway writes is a TypeMessage whose Content is the line. A frame the
// codec rejects without losing the stream comes back as a non-fatal
// *frame.Error, and the next Recv goes on. Once the reader has stopped and
// the queue is drained, Recv returns why: io.EOF when the gateway closed the
// connection, ErrClosed after Close, a fatal *frame.Error or a read error.
func (c *Client) Recv(ctx context.Context) (frame.Frame, error) {
	select {
	case it, ok := <-c.frames:
		if !ok {
			return frame.Frame{}, c.err
		}
		return it.f, it.err
	case <-ctx.Done():
		return frame.Frame{}, ctx.Err()
	}
}

// readLoop is the reader goroutine: it reads, decodes and queues until the
// connection fails or Close.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	err := c.read()
	select {
	case <-c.done:
		err = ErrClosed
	default:
	}
	c.err = err
	close(c.frames)
}

func (c *Client) read() error {
	buf := make([]byte, 0, min(readChunk, c.max))
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= c.max {
				// Unreachable with a correct codec, which reports a frame
				// above the limit before the buffer fills.
				return &frame.Error{Code: frame.CodeTooLarge, Reason: "read buffer full", Fatal: true}
			}
			buf = append(make([]byte, 0, min(2*cap(buf), c.max)), buf...)
		}
		n, rerr := c.conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		atEOF := rerr != nil
		used, err := c.decodeAll(buf, atEOF)
		if err != nil {
			return err
		}
		buf = buf[:copy(buf, buf[used:])]
		if rerr != nil {
			return rerr
		}
	}
}

// decodeAll queues every whole frame of buf and returns the bytes used.
func (c *Client) decodeAll(buf []byte, atEOF bool) (int, error) {
	used := 0
	for used < len(buf) {
		f, n, err := c.decode(buf[used:], atEOF)
		var fe *frame.Error
		switch {
		case errors.Is(err, frame.ErrIncomplete):
			return used, nil
		case errors.As(err, &fe) && fe.Fatal:
			return used, fe
		case err != nil:
			if !c.deliver(item{err: err}) {
				return used, ErrClosed
			}
		case f.Type == frame.TypePing && !c.o.ManualPong:
			if err := c.Send(frame.Frame{Type: frame.TypePong, Seq: f.Seq}); err != nil {
				return used, fmt.Errorf("southboundtest: pong: %w", err)
			}
		default:
			if !c.deliver(item{f: f.Clone()}) {
				return used, ErrClosed
			}
		}
		used += n
	}
	return used, nil
}

// decode decodes one frame. The demo downlink is plain text, one line per
// frame (the gateway's demo encoder ends each with '\n').
func (c *Client) decode(buf []byte, atEOF bool) (frame.Frame, int, error) {
	if c.codec.Native() {
		return c.codec.Decode(buf, atEOF)
	}
	i := bytes.IndexByte(buf[:min(len(buf), c.max)], '\n')
	switch {
	case i >= 0:
		return frame.Frame{Type: frame.TypeMessage, Content: bytes.TrimSuffix(buf[:i], []byte("\r"))}, i + 1, nil
	case atEOF && len(buf) > 0 && len(buf) <= c.max:
		return frame.Frame{Type: frame.TypeMessage, Content: buf}, len(buf), nil
	case len(buf) >= c.max:
		return frame.Frame{}, 0, frame.Errorf(frame.CodeTooLarge, true, "line above the %d-byte limit", c.max)
	}
	return frame.Frame{}, 0, frame.ErrIncomplete
}

// deliver queues it, waiting while the queue is full; it reports false when
// Close interrupted the wait.
func (c *Client) deliver(it item) bool {
	select {
	case c.frames <- it:
		return true
	case <-c.done:
		return false
	}
}

var _ io.Closer = (*Client)(nil)
