package iotdasim

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/subgate/subgate/northbound/iotda"
)

const (
	gw1     = "gw1"
	secret1 = "secret-one"
	gw2     = "gw_two"
	secret2 = "secret-two"
	// waitTime bounds every wait for an event in these tests.
	waitTime = 10 * time.Second
)

// fixedTS is the CONNECT timestamp used with sign type 0.
const fixedTS = "2025041401"

func newSim(t *testing.T, mod func(*Config)) *Sim {
	t.Helper()
	cfg := Config{
		Listen:         "127.0.0.1:0",
		Devices:        map[string]string{gw1: secret1, gw2: secret2},
		AutoAcceptAdds: true,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	t.Cleanup(cancel)
	return ctx
}

func waitFor(t *testing.T, s *Sim, what string, cond func(*View) bool) {
	t.Helper()
	if err := s.WaitFor(ctxT(t), cond); err != nil {
		t.Fatalf("waiting for %s: %v (errors: %q)", what, err, s.Errors())
	}
}

// msg is a message received by a test device.
type msg struct {
	topic   string
	payload []byte
	qos     byte
}

// device is a paho client logged in as a gateway.
type device struct {
	t    *testing.T
	c    paho.Client
	gw   string
	in   chan msg
	lost chan error // connection lost, from paho
	sim  *Sim
}

func connectDevice(t *testing.T, s *Sim, gw, secret string) *device {
	t.Helper()
	d, err := dial(t, s.Addr(), gw, secret, nil)
	if err != nil {
		t.Fatalf("connect %s: %v", gw, err)
	}
	d.sim = s
	waitFor(t, s, gw+" connected", func(v *View) bool { return v.Connected(gw) })
	return d
}

func dial(t *testing.T, addr, gw, secret string, mod func(*paho.ClientOptions)) (*device, error) {
	d := &device{t: t, gw: gw, in: make(chan msg, 1024), lost: make(chan error, 1)}
	o := paho.NewClientOptions().
		AddBroker("tcp://" + addr).
		SetClientID(iotda.ClientID(gw, 0, fixedTS)).
		SetUsername(gw).
		SetPassword(iotda.Password(secret, fixedTS)).
		SetKeepAlive(120 * time.Second).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case d.lost <- err:
			default:
			}
		}).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			select {
			case d.in <- msg{topic: m.Topic(), payload: append([]byte(nil), m.Payload()...), qos: m.Qos()}:
			default:
				t.Errorf("device %s inbox full", gw)
			}
		})
	if mod != nil {
		mod(o)
	}
	d.c = paho.NewClient(o)
	tok := d.c.Connect()
	if !tok.WaitTimeout(waitTime) {
		return nil, context.DeadlineExceeded
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { d.c.Disconnect(0) })
	return d, nil
}

func (d *device) publish(topic string, qos byte, payload any) {
	d.t.Helper()
	var b []byte
	switch p := payload.(type) {
	case []byte:
		b = p
	case string:
		b = []byte(p)
	default:
		var err error
		if b, err = json.Marshal(p); err != nil {
			d.t.Fatal(err)
		}
	}
	tok := d.c.Publish(topic, qos, false, b)
	if qos > 0 {
		if !tok.WaitTimeout(waitTime) {
			d.t.Fatalf("publish %s: no PUBACK", topic)
		}
		if err := tok.Error(); err != nil {
			d.t.Fatalf("publish %s: %v", topic, err)
		}
	}
}

func (d *device) event(objectDeviceID, serviceID, eventType, eventID string, paras any) {
	d.t.Helper()
	b, err := iotda.NewEvents(objectDeviceID, serviceID, eventType, eventID, time.Time{}, paras)
	if err != nil {
		d.t.Fatal(err)
	}
	d.publish(iotda.TopicEventsUp(d.gw), 1, b)
}

func (d *device) subscribe(filter string, qos byte) {
	d.t.Helper()
	tok := d.c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(waitTime) || tok.Error() != nil {
		d.t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

// recv returns the next message the device received.
func (d *device) recv() msg {
	d.t.Helper()
	select {
	case m := <-d.in:
		return m
	case <-time.After(waitTime):
		d.t.Fatalf("device %s: no message", d.gw)
		return msg{}
	}
}

// recvEvent returns the next events/down message, decoded.
func (d *device) recvEvent() (iotda.Events, iotda.Event) {
	d.t.Helper()
	m := d.recv()
	if m.topic != iotda.TopicEventsDown(d.gw) {
		d.t.Fatalf("got %s %s, want an event", m.topic, m.payload)
	}
	evs, err := iotda.ParseEvents(m.payload)
	if err != nil {
		d.t.Fatalf("event %s: %v", m.payload, err)
	}
	if len(evs.Services) != 1 {
		d.t.Fatalf("event with %d services", len(evs.Services))
	}
	return evs, evs.Services[0]
}

func decodeParas(t *testing.T, ev iotda.Event, v any) {
	t.Helper()
	if err := ev.DecodeParasStrict(v); err != nil {
		t.Fatal(err)
	}
}

// rawConnect sends a hand-built MQTT 3.1.1 CONNECT and returns the CONNACK
// return code.
type connectPkt struct {
	clientID, username, password string
	keepalive                    uint16
	will                         bool
}

func encodeConnect(p connectPkt) []byte {
	str := func(b []byte, s string) []byte {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		return append(b, s...)
	}
	var vh []byte
	vh = str(vh, "MQTT")
	flags := byte(0x02) // clean session
	if p.username != "" {
		flags |= 0x80
	}
	if p.password != "" {
		flags |= 0x40
	}
	if p.will {
		flags |= 0x04 | 0x08 // will, QoS 1
	}
	vh = append(vh, 4, flags)
	vh = binary.BigEndian.AppendUint16(vh, p.keepalive)
	vh = str(vh, p.clientID)
	if p.will {
		vh = str(vh, "will/topic")
		vh = str(vh, "bye")
	}
	if p.username != "" {
		vh = str(vh, p.username)
	}
	if p.password != "" {
		vh = str(vh, p.password)
	}
	pkt := []byte{0x10}
	n := len(vh)
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	return append(pkt, vh...)
}

func rawConnect(t *testing.T, c net.Conn, p connectPkt) byte {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(waitTime))
	if _, err := c.Write(encodeConnect(p)); err != nil {
		t.Fatal(err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(bufio.NewReader(c), ack[:]); err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 {
		t.Fatalf("not a CONNACK: % x", ack)
	}
	return ack[3]
}

func rawConnectTCP(t *testing.T, addr string, p connectPkt) byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return rawConnect(t, c, p)
}

func rawConnectTLS(t *testing.T, addr string, cfg *tls.Config, p connectPkt) byte {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return rawConnect(t, c, p)
}

func goodConnect(gw, secret string) connectPkt {
	return connectPkt{
		clientID:  iotda.ClientID(gw, 0, fixedTS),
		username:  gw,
		password:  iotda.Password(secret, fixedTS),
		keepalive: 120,
	}
}

func hasError(v *View, sub string) bool {
	for _, e := range v.Errors() {
		if strings.Contains(e, sub) {
			return true
		}
	}
	return false
}

type pahoOptions = paho.ClientOptions

// waitLost waits until paho reports the connection lost.
func (d *device) waitLost() error {
	d.t.Helper()
	select {
	case err := <-d.lost:
		return err
	case <-time.After(waitTime):
		d.t.Fatalf("device %s: connection not lost", d.gw)
		return nil
	}
}

// waitNewError waits for an error containing sub among those recorded
// after the first n.
func waitNewError(t *testing.T, s *Sim, n int, sub string) {
	t.Helper()
	waitFor(t, s, "error "+sub, func(v *View) bool {
		errs := v.Errors()
		for _, e := range errs[min(n, len(errs)):] {
			if strings.Contains(e, sub) {
				return true
			}
		}
		return false
	})
}
