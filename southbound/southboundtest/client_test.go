package southboundtest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

// testTimeout bounds every wait; tests wait on events, never on time.
const testTimeout = 10 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// server is a tiny gateway stand-in: it accepts connections and runs handle
// on each in its own goroutine; Cleanup closes everything and waits.
type server struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func newServer(t *testing.T, ln net.Listener, handle func(*peer)) *server {
	t.Helper()
	s := &server{ln: ln}
	s.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, conn)
			s.mu.Unlock()
			s.wg.Go(func() {
				defer conn.Close()
				handle(&peer{t: t, conn: conn})
			})
		}
	})
	t.Cleanup(s.close)
	return s
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// peer is the server's side of one connection.
type peer struct {
	t     *testing.T
	conn  net.Conn
	codec frame.Codec
	buf   []byte
}

// read returns the next frame; with demo each read is one message, as
// the demo device sends them.
func (p *peer) read() (frame.Frame, error) {
	chunk := make([]byte, 4096)
	for {
		if len(p.buf) > 0 {
			f, n, err := p.codec.Decode(p.buf, !p.codec.Native())
			if !errors.Is(err, frame.ErrIncomplete) {
				f = f.Clone()
				p.buf = p.buf[n:]
				return f, err
			}
		}
		n, err := p.conn.Read(chunk)
		if err != nil {
			return frame.Frame{}, err
		}
		p.buf = append(p.buf, chunk[:n]...)
	}
}

func (p *peer) write(f frame.Frame) {
	b, err := p.codec.AppendEncode(nil, f)
	if err != nil {
		p.t.Errorf("server encode %s: %v", f.Type, err)
		return
	}
	p.writeRaw(b)
}

func (p *peer) writeRaw(b []byte) {
	if _, err := p.conn.Write(b); err != nil {
		p.t.Errorf("server write: %v", err)
	}
}

var testSecret = []byte("device-secret-0001")

const testDeviceID = "64f1c2a0b2e3_smoke-0001"

// gateway plays the native session: optional challenge, hello check,
// welcome, then acks data frames with a seq, answers pings and forwards
// every other frame to got.
func gateway(codec frame.Codec, secret []byte, got chan<- frame.Frame) func(*peer) {
	return func(p *peer) {
		p.codec = codec
		nonce := []byte("0123456789abcdef")
		if secret != nil {
			p.write(frame.Frame{Type: frame.TypeChallenge, Nonce: nonce})
		}
		hello, err := p.read()
		if err != nil {
			return
		}
		if hello.Type != frame.TypeHello || secret != nil && !frame.CheckProof(secret, nonce, hello.NodeID, hello.Proof) {
			p.write(frame.Frame{Type: frame.TypeError, Code: frame.CodeAuthFailed, Reason: "bad proof"})
			return
		}
		p.write(frame.Frame{Type: frame.TypeWelcome, DeviceID: testDeviceID})
		for {
			f, err := p.read()
			if err != nil {
				return
			}
			switch {
			case f.Type == frame.TypePing:
				p.write(frame.Frame{Type: frame.TypePong, Seq: f.Seq})
			case f.Type == frame.TypeProperties && f.Seq != 0:
				p.write(frame.Frame{Type: frame.TypeAck, Seq: f.Seq})
			}
			got <- f
		}
	}
}

func TestNativeSession(t *testing.T) {
	for _, codec := range []string{"jsonl", "binary"} {
		for _, secret := range [][]byte{nil, testSecret} {
			t.Run(codec+"/token="+boolString(secret != nil), func(t *testing.T) {
				ctx := testCtx(t)
				c, _ := frame.ByName(codec)
				got := make(chan frame.Frame, 16)
				s := newServer(t, listen(t), gateway(c, secret, got))
				cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: codec, NodeID: "smoke-0001", FwVersion: "v1.2.0", Secret: secret})
				if err != nil {
					t.Fatal(err)
				}
				defer cl.Close()
				w, err := cl.Hello(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if w.Type != frame.TypeWelcome || w.DeviceID != testDeviceID {
					t.Fatalf("welcome = %+v", w)
				}
				services := json.RawMessage(`[{"service_id":"s","properties":{"t":21}}]`)
				if err := cl.Send(frame.Frame{Type: frame.TypeProperties, Seq: 5, Services: services}); err != nil {
					t.Fatal(err)
				}
				if f := recvType(t, ctx, cl, frame.TypeAck); f.Seq != 5 {
					t.Fatalf("ack seq = %d", f.Seq)
				}
				if f := <-got; f.Type != frame.TypeProperties || !bytes.Equal(f.Services, services) {
					t.Fatalf("server got %+v", f)
				}
			})
		}
	}
}

func boolString(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func recvType(t *testing.T, ctx context.Context, c *Client, want frame.Type) frame.Frame {
	t.Helper()
	f, err := c.Recv(ctx)
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if f.Type != want {
		t.Fatalf("Recv = %+v, want a %s", f, want)
	}
	return f
}

func TestHelloRefused(t *testing.T) {
	ctx := testCtx(t)
	s := newServer(t, listen(t), gateway(frame.JSONL(), testSecret, make(chan frame.Frame, 1)))
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "jsonl", NodeID: "smoke-0001", Secret: []byte("wrong")})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, err = cl.Hello(ctx)
	var fe *frame.Error
	if !errors.As(err, &fe) || fe.Code != frame.CodeAuthFailed || fe.Reason != "bad proof" {
		t.Fatalf("Hello error = %v, want auth_failed", err)
	}
}

// TestHelloWithoutSecret: a client without a secret passes over the
// challenge and sends a hello without proof, so the gateway refuses it.
func TestHelloWithoutSecret(t *testing.T) {
	ctx := testCtx(t)
	s := newServer(t, listen(t), gateway(frame.Binary(), testSecret, make(chan frame.Frame, 1)))
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "binary", NodeID: "smoke-0001"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var fe *frame.Error
	if _, err := cl.Hello(ctx); !errors.As(err, &fe) || fe.Code != frame.CodeAuthFailed {
		t.Fatalf("Hello error = %v, want auth_failed", err)
	}
}

func TestHelloUnexpected(t *testing.T) {
	ctx := testCtx(t)
	s := newServer(t, listen(t), func(p *peer) {
		p.codec = frame.JSONL()
		if _, err := p.read(); err == nil {
			p.write(frame.Frame{Type: frame.TypeAck, Seq: 1})
		}
		io.Copy(io.Discard, p.conn)
	})
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "jsonl", NodeID: "n"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Hello(ctx); !errors.Is(err, ErrUnexpected) {
		t.Fatalf("Hello error = %v, want ErrUnexpected", err)
	}
}

func TestAutoPong(t *testing.T) {
	ctx := testCtx(t)
	pong := make(chan frame.Frame, 1)
	s := newServer(t, listen(t), func(p *peer) {
		p.codec = frame.Binary()
		p.write(frame.Frame{Type: frame.TypePing, Seq: 9})
		f, err := p.read()
		if err == nil {
			pong <- f
		}
	})
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "binary"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	select {
	case f := <-pong:
		if f.Type != frame.TypePong || f.Seq != 9 {
			t.Fatalf("server got %+v, want pong 9", f)
		}
	case <-ctx.Done():
		t.Fatal("no pong")
	}
}

func TestManualPong(t *testing.T) {
	ctx := testCtx(t)
	s := newServer(t, listen(t), func(p *peer) {
		p.codec = frame.JSONL()
		p.write(frame.Frame{Type: frame.TypePing, Seq: 4})
		io.Copy(io.Discard, p.conn)
	})
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "jsonl", ManualPong: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if f := recvType(t, ctx, cl, frame.TypePing); f.Seq != 4 {
		t.Fatalf("ping seq = %d", f.Seq)
	}
}

func TestDemo(t *testing.T) {
	for _, newline := range []bool{false, true} {
		t.Run("newline="+boolString(newline), func(t *testing.T) {
			ctx := testCtx(t)
			raw := make(chan string, 1)
			s := newServer(t, listen(t), func(p *peer) {
				p.codec = frame.Demo()
				b := make([]byte, 1024)
				n, err := p.conn.Read(b)
				if err != nil {
					return
				}
				raw <- string(b[:n])
				f, _, err := p.codec.Decode(b[:n], true)
				if err != nil {
					p.t.Errorf("server decode: %v", err)
					return
				}
				p.write(frame.Frame{Type: frame.TypeWelcome, DeviceID: f.NodeID})
				p.write(frame.Frame{Type: frame.TypeCommand, RequestID: "r1", CommandName: "ring"})
				p.writeRaw([]byte("no newline at the end"))
			})
			cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "demo", NodeID: testDeviceID, DemoNewline: newline})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if _, err := cl.Hello(ctx); !errors.Is(err, ErrNoHello) {
				t.Fatalf("Hello on demo: %v", err)
			}
			if err := cl.Send(frame.Frame{Type: frame.TypeMessage, Content: []byte("hello|world")}); err != nil {
				t.Fatal(err)
			}
			want := testDeviceID + "|hello|world"
			if newline {
				want += "\n"
			}
			if got := <-raw; got != want {
				t.Fatalf("server read %q, want %q", got, want)
			}
			for _, line := range []string{
				"sub device: " + testDeviceID + " go online",
				`{"service_id":"","command_name":"ring","paras":{},"request_id":"r1"}`,
				"no newline at the end",
			} {
				if f := recvType(t, ctx, cl, frame.TypeMessage); string(f.Content) != line {
					t.Fatalf("Recv = %q, want %q", f.Content, line)
				}
			}
			if _, err := cl.Recv(ctx); !errors.Is(err, io.EOF) {
				t.Fatalf("Recv after the server closed = %v, want io.EOF", err)
			}
			if err := cl.Send(frame.Frame{Type: frame.TypeProperties}); !errors.Is(err, frame.ErrCannotCarry) {
				t.Fatalf("Send properties on demo = %v", err)
			}
		})
	}
}

func TestSendRaw(t *testing.T) {
	ctx := testCtx(t)
	got := make(chan []byte, 1)
	s := newServer(t, listen(t), func(p *peer) {
		b, _ := io.ReadAll(p.conn)
		got <- b
	})
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "binary"})
	if err != nil {
		t.Fatal(err)
	}
	garbage := []byte{0x00, 0xb5, 0xff, '\n'}
	if err := cl.SendRaw(garbage); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if b := <-got; !bytes.Equal(b, garbage) {
		t.Fatalf("server got % x", b)
	}
	if err := cl.SendRaw(garbage); !errors.Is(err, ErrClosed) {
		t.Fatalf("SendRaw after Close = %v", err)
	}
}

// TestConcurrentSend: frames sent from many goroutines arrive whole.
func TestConcurrentSend(t *testing.T) {
	ctx := testCtx(t)
	const senders, each = 8, 50
	got := make(chan frame.Frame, senders*each)
	s := newServer(t, listen(t), gateway(frame.JSONL(), nil, got))
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "jsonl", NodeID: "n"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range senders {
		wg.Go(func() {
			for j := range each {
				name := strings.Repeat("x", i*10+j)
				if err := cl.Send(frame.Frame{Type: frame.TypeMessage, Name: name}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for range senders * each {
		select {
		case f := <-got:
			if f.Type != frame.TypeMessage || strings.Trim(f.Name, "x") != "" {
				t.Fatalf("server got %+v", f)
			}
		case <-ctx.Done():
			t.Fatal("frames missing")
		}
	}
}

// TestGatewayGarbage: a bad frame the codec can skip is one error from
// Recv; a fatal one ends the stream.
func TestGatewayGarbage(t *testing.T) {
	ctx := testCtx(t)
	s := newServer(t, listen(t), func(p *peer) {
		p.codec = frame.Binary()
		p.writeRaw([]byte{frame.BinaryMagic, frame.Version, 0xee, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // unknown type: skippable
		p.write(frame.Frame{Type: frame.TypeAck, Seq: 2})
		p.writeRaw([]byte{0x42}) // framing lost
		io.Copy(io.Discard, p.conn)
	})
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "binary"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var fe *frame.Error
	if _, err := cl.Recv(ctx); !errors.As(err, &fe) || fe.Fatal || fe.Code != frame.CodeUnsupported {
		t.Fatalf("first Recv = %v, want non-fatal unsupported", err)
	}
	if f := recvType(t, ctx, cl, frame.TypeAck); f.Seq != 2 {
		t.Fatalf("ack = %+v", f)
	}
	if _, err := cl.Recv(ctx); !errors.As(err, &fe) || !fe.Fatal {
		t.Fatalf("third Recv = %v, want fatal", err)
	}
	if _, err := cl.Recv(ctx); !errors.As(err, &fe) || !fe.Fatal {
		t.Fatalf("Recv after the end = %v, want the same fatal error", err)
	}
}

func TestRecvContext(t *testing.T) {
	s := newServer(t, listen(t), func(p *peer) { io.Copy(io.Discard, p.conn) })
	cl, err := Dial(testCtx(t), Options{Addr: s.addr(), Codec: "jsonl"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := cl.Recv(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Recv = %v, want context.Canceled", err)
	}
}

// TestCloseWhileQueueFull: Close ends a reader blocked on a full queue.
func TestCloseWhileQueueFull(t *testing.T) {
	ctx := testCtx(t)
	sent := make(chan struct{})
	s := newServer(t, listen(t), func(p *peer) {
		p.codec = frame.JSONL()
		for i := range 10 {
			p.write(frame.Frame{Type: frame.TypePong, Seq: uint32(i + 1)})
		}
		close(sent)
		io.Copy(io.Discard, p.conn)
	})
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "jsonl", RecvQueue: 1})
	if err != nil {
		t.Fatal(err)
	}
	<-sent
	if f := recvType(t, ctx, cl, frame.TypePong); f.Seq != 1 {
		t.Fatalf("first pong seq = %d", f.Seq)
	}
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cl.readerDone:
	default:
		t.Fatal("reader still running after Close")
	}
	if err := cl.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for {
		if _, err := cl.Recv(ctx); err != nil {
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("Recv after Close = %v, want ErrClosed", err)
			}
			break
		}
	}
}

// TestNoGoroutineLeak: after Close no reader goroutine is left.
func TestNoGoroutineLeak(t *testing.T) {
	ctx := testCtx(t)
	s := newServer(t, listen(t), func(p *peer) {
		p.codec = frame.Binary()
		p.write(frame.Frame{Type: frame.TypePing, Seq: 1})
		io.Copy(io.Discard, p.conn)
	})
	var clients []*Client
	for range 20 {
		cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "binary"})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, cl)
	}
	if readers() == 0 {
		t.Fatal("the stack scan finds no reader: readers() is broken")
	}
	for _, cl := range clients {
		cl.Close()
	}
	// Close has waited for each reader to signal its end; the goroutine
	// itself returns right after, so give the scheduler a moment.
	for readers() != 0 {
		if ctx.Err() != nil {
			t.Fatalf("%d readers left after Close", readers())
		}
		runtime.Gosched()
	}
}

// readers counts running reader goroutines of this package.
func readers() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte("southboundtest.(*Client).readLoop("))
}

func TestLocalAddr(t *testing.T) {
	ctx := testCtx(t)
	remote := make(chan string, 1)
	s := newServer(t, listen(t), func(p *peer) {
		remote <- p.conn.RemoteAddr().(*net.TCPAddr).IP.String()
		io.Copy(io.Discard, p.conn)
	})
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "jsonl", LocalAddr: "127.0.0.5"})
	if err != nil {
		t.Skipf("cannot bind 127.0.0.5 here: %v", err)
	}
	defer cl.Close()
	if ip := cl.LocalAddr().(*net.TCPAddr).IP.String(); ip != "127.0.0.5" {
		t.Fatalf("LocalAddr = %s", ip)
	}
	if ip := <-remote; ip != "127.0.0.5" {
		t.Fatalf("server saw %s", ip)
	}
}

func TestTLS(t *testing.T) {
	ctx := testCtx(t)
	cert, pool := selfSigned(t)
	ln := tls.NewListener(listen(t), &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	s := newServer(t, ln, gateway(frame.JSONL(), nil, make(chan frame.Frame, 1)))
	cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: "jsonl", NodeID: "n",
		TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := cl.conn.(*tls.Conn); !ok {
		t.Fatalf("connection is %T, want *tls.Conn", cl.conn)
	}
}

func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "subgate test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Unix(1<<33, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func TestDialOptions(t *testing.T) {
	ctx := testCtx(t)
	bad := []Options{
		{Codec: "jsonl"},
		{Addr: "127.0.0.1:1", Codec: "xml"},
		{Addr: "127.0.0.1:1", Codec: "jsonl", LocalAddr: "localhost"},
	}
	for _, o := range bad {
		if _, err := Dial(ctx, o); !errors.Is(err, ErrOptions) {
			t.Errorf("Dial(%+v) = %v, want ErrOptions", o, err)
		}
	}
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	if _, err := Dial(ctx, Options{Addr: addr, Codec: "jsonl"}); err == nil {
		t.Error("Dial to a closed port succeeded")
	}
}

func TestSendTooLarge(t *testing.T) {
	ctx := testCtx(t)
	s := newServer(t, listen(t), func(p *peer) { io.Copy(io.Discard, p.conn) })
	for _, codec := range []string{"demo", "jsonl", "binary"} {
		cl, err := Dial(ctx, Options{Addr: s.addr(), Codec: codec, NodeID: "n", MaxFrame: 128})
		if err != nil {
			t.Fatal(err)
		}
		err = cl.Send(frame.Frame{Type: frame.TypeMessage, Content: bytes.Repeat([]byte("x"), 200)})
		if !errors.Is(err, frame.ErrCannotCarry) {
			t.Errorf("%s: Send above MaxFrame = %v", codec, err)
		}
		cl.Close()
	}
}
