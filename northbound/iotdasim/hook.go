package iotdasim

import (
	"bytes"
	"crypto/hmac"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/subgate/subgate/northbound/iotda"
)

// hook connects mochi's callbacks to the Sim. Callbacks run on mochi's
// per-client goroutines; they take s.mu only briefly and never publish.
type hook struct {
	mqtt.HookBase
	s   *Sim
	srv *mqtt.Server // the broker of the run this hook belongs to
}

var provided = []byte{
	mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnSessionEstablished, mqtt.OnDisconnect,
	mqtt.OnACLCheck, mqtt.OnPacketRead, mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
	mqtt.OnPublish,
}

func (h *hook) ID() string { return "iotdasim" }

func (h *hook) Provides(b byte) bool { return bytes.IndexByte(provided, b) >= 0 }

// CONNACK return codes (iotda-protocol §1.5), as MQTT 3.1.1 bytes.
const (
	connackBadClientID   = 0x02
	connackBadCredential = 0x04
	connackNotAuthorized = 0x05
)

// errLogin is the error returned to mochi after a refused CONNECT.
var errLogin = errors.New("iotdasim: login refused")

// OnConnect checks the CONNECT the IoTDA way and answers a refusal with
// the IoTDA CONNACK code itself: mochi would map "bad username or
// password" to 0x05 for MQTT 3.1.1, IoTDA sends 0x04.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if cl.Net.Inline {
		return nil
	}
	c, code, reason := h.s.login(cl, pk)
	if code == 0 {
		h.s.mu.Lock()
		h.s.logins[cl] = c
		h.s.mu.Unlock()
		return nil
	}
	_ = h.srv.SendConnack(cl, connackCode(cl, code), false, nil)
	return fmt.Errorf("%w: %s", errLogin, reason)
}

func connackCode(cl *mqtt.Client, v3 byte) packets.Code {
	if cl.Properties.ProtocolVersion == 5 {
		switch v3 {
		case connackBadClientID:
			return packets.ErrClientIdentifierNotValid
		case connackBadCredential:
			return packets.ErrBadUsernameOrPassword
		default:
			return packets.ErrNotAuthorized
		}
	}
	return packets.Code{Code: v3}
}

// login validates a CONNECT and returns the connection record, or a
// CONNACK code and a reason. Every refusal is recorded as an error.
func (s *Sim) login(cl *mqtt.Client, pk packets.Packet) (*conn, byte, string) {
	cid := pk.Connect.ClientIdentifier
	refuse := func(gw string, code byte, reason string) (*conn, byte, string) {
		s.mu.Lock()
		s.errorfLocked(gw, "connect refused (0x%02x): %s", code, reason)
		s.mu.Unlock()
		return nil, code, reason
	}
	// Will and retain are not supported (iotda-protocol §1.4). The
	// platform's answer is undocumented; the simulator refuses with 0x05.
	if pk.Connect.WillFlag {
		return refuse(cid, connackNotAuthorized, "will messages are not supported")
	}
	id, signType, ts, err := iotda.ParseClientID(cid)
	if err != nil {
		return refuse(cid, connackBadClientID, err.Error())
	}
	ka := time.Duration(pk.Connect.Keepalive) * time.Second
	if ka < iotda.MinKeepAlive || ka > iotda.MaxKeepAlive {
		return refuse(id, connackBadClientID, fmt.Sprintf("keepalive %ds outside 30-1200", pk.Connect.Keepalive))
	}
	s.mu.Lock()
	g := s.gateways[id]
	s.mu.Unlock()
	if g == nil {
		return refuse(id, connackBadCredential, "unknown device")
	}
	if string(pk.Connect.Username) != id {
		return refuse(id, connackBadCredential, "username is not the device id")
	}
	if s.clientCAs != nil {
		if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
			if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
				// X.509 login: the verified certificate names the device;
				// no password is needed (iotda-protocol §1.3).
				if cn := certs[0].Subject.CommonName; cn != id {
					return refuse(id, connackBadCredential, fmt.Sprintf("certificate CN %q is not the device id", cn))
				}
				return s.newConn(cl, id), 0, ""
			}
		}
	}
	switch signType {
	case iotda.SignNoCheck:
	case iotda.SignCheckTimestamp:
		if s.cfg.CheckTimestamp {
			t, _ := iotda.ParseTimestamp(ts) // valid: ParseClientID checked it
			if d := s.now().UTC().Truncate(time.Hour).Sub(t); d > time.Hour || d < -time.Hour {
				return refuse(id, connackBadCredential, "timestamp "+ts+" is not the current hour")
			}
		}
	default:
		return refuse(id, connackBadCredential, "sign type 2 (HMAC-SM3) is not supported by the simulator")
	}
	if !hmac.Equal(pk.Connect.Password, []byte(iotda.Password(g.secret, ts))) {
		return refuse(id, connackBadCredential, "bad password")
	}
	return s.newConn(cl, id), 0, ""
}

func (s *Sim) newConn(cl *mqtt.Client, gw string) *conn {
	c := &conn{gw: gw, cl: cl, clientID: cl.ID, remote: cl.Net.Remote, subs: map[string]byte{}}
	if s.cfg.MaxMsgsPerSec > 0 {
		c.window = make([]time.Time, s.cfg.MaxMsgsPerSec)
	}
	return c
}

// OnConnectAuthenticate accepts exactly the clients OnConnect accepted.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	if cl.Net.Inline {
		return true
	}
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	_, ok := h.s.logins[cl]
	return ok
}

// OnSessionEstablished makes the connection the gateway's only one
// (iotda-protocol §1.1: an older connection is dropped) and adds the
// implicit QoS 0 subscriptions to the downstream system topics
// (iotda-protocol §1.6). It runs before mochi reads the client's first
// packet after CONNACK, so explicit subscriptions replace these.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if cl.Net.Inline {
		return
	}
	s := h.s
	s.mu.Lock()
	c := s.logins[cl]
	delete(s.logins, cl)
	s.mu.Unlock()
	if c == nil {
		return
	}
	for _, f := range iotda.Subscriptions(c.gw) {
		if _, ok := cl.State.Subscriptions.Get(f); !ok {
			sub := packets.Subscription{Filter: f, Qos: 0}
			h.srv.Topics.Subscribe(cl.ID, sub)
			cl.State.Subscriptions.Add(f, sub)
		}
	}
	s.mu.Lock()
	g := s.gateways[c.gw]
	old := g.conn
	g.conn = c
	g.connects++
	s.byClient[cl] = c
	s.rec.conns.add(ConnEvent{Gateway: c.gw, ClientID: c.clientID, Remote: c.remote, Connected: true, At: s.now()})
	s.notifyLocked()
	s.mu.Unlock()
	s.log.Info("gateway connected", "device_id", c.gw, "remote", c.remote)
	if old != nil && old.cl != cl {
		kick(old.cl, errors.New("iotdasim: replaced by a newer connection"))
	}
}

// OnDisconnect forgets the connection.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if cl.Net.Inline {
		return
	}
	s := h.s
	s.mu.Lock()
	delete(s.logins, cl)
	c := s.byClient[cl]
	delete(s.byClient, cl)
	if c == nil {
		s.mu.Unlock()
		return
	}
	if errors.Is(err, packets.ErrPacketTooLarge) {
		s.errorfLocked(c.gw, "packet over %d bytes refused", maxPacketSize)
	}
	g := s.gateways[c.gw]
	if g.conn == c {
		g.conn = nil
	}
	ev := ConnEvent{Gateway: c.gw, ClientID: c.clientID, Remote: c.remote, At: s.now()}
	if err != nil {
		ev.Err = err.Error()
	}
	s.rec.conns.add(ev)
	s.notifyLocked()
	s.mu.Unlock()
	s.log.Info("gateway disconnected", "device_id", c.gw, "remote", c.remote, "err", err)
}

// allowed applies the topic rule of iotda-protocol §1.6: a device uses
// only its own $oc/devices/{id}/ topics; other $ topics are closed; any
// other topic is a policy topic, allowed by the default policy (§2.1).
func allowed(gw, topic string) bool {
	if id, ok := iotda.TopicDevice(topic); ok {
		return id == gw
	}
	return !strings.HasPrefix(topic, "$")
}

// OnACLCheck enforces allowed and records refusals.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.byClient[cl]
	if c == nil {
		return false
	}
	if allowed(c.gw, topic) {
		return true
	}
	op := "subscribe to"
	if write {
		op = "publish on"
	}
	s.errorfLocked(c.gw, "%s foreign topic %q refused", op, topic)
	return false
}

// OnPacketRead refuses what IoTDA does not support before mochi acts on
// it: QoS 2 and retained publishes, payloads over 1 MB (iotda-protocol
// §1.4, §7), and publishes on topics the device may not use (§1.6),
// whatever their QoS (mochi would drop a QoS 0 one silently and ignore
// reserved $ topics). The simulator records the error and drops the
// connection, the one answer an MQTT 3.1.1 broker has for a publish it
// will not take; the platform's own reaction is undocumented.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.byClient[cl]
	if c == nil {
		return pk, nil
	}
	var reason string
	switch {
	case pk.FixedHeader.Qos > 1:
		reason = "qos 2 is not supported"
	case pk.FixedHeader.Retain:
		reason = "retain true is not supported"
	case len(pk.Payload) > iotda.MaxPublishSize:
		reason = fmt.Sprintf("payload of %d bytes is over %d", len(pk.Payload), iotda.MaxPublishSize)
	case !allowed(c.gw, pk.TopicName):
		reason = "foreign topic"
	default:
		return pk, nil
	}
	s.errorfLocked(c.gw, "publish on %q refused: %s", pk.TopicName, reason)
	// Only ErrRejectPacket makes mochi stop reading this client.
	return pk, fmt.Errorf("%w: %s", packets.ErrRejectPacket, reason)
}

// OnSubscribe refuses QoS 2 filters and filters over the subscription
// limit (iotda-protocol §1.4, §1.6) by making them invalid, so mochi
// answers 0x80 for them.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.byClient[cl]
	if c == nil {
		return pk
	}
	n := len(c.subs)
	filters := make(packets.Subscriptions, len(pk.Filters))
	for i, f := range pk.Filters {
		filters[i] = f
		if f.Qos > 1 {
			s.errorfLocked(c.gw, "subscribe %q with QoS 2 refused", f.Filter)
			filters[i].Filter = ""
			continue
		}
		if _, ok := c.subs[f.Filter]; !ok {
			n++
			if n > iotda.MaxSubscriptions {
				s.errorfLocked(c.gw, "subscribe %q refused: over %d subscriptions", f.Filter, iotda.MaxSubscriptions)
				filters[i].Filter = ""
			}
		}
	}
	pk.Filters = filters
	return pk
}

// OnSubscribed records the granted explicit subscriptions.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if cl.Net.Inline {
		return
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.byClient[cl]
	if c == nil {
		return
	}
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] <= 2 && f.Filter != "" {
			c.subs[f.Filter] = codes[i]
		}
	}
	s.notifyLocked()
}

// OnUnsubscribed forgets explicit subscriptions.
func (h *hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.byClient[cl]; c != nil {
		for _, f := range pk.Filters {
			delete(c.subs, f.Filter)
		}
	}
}

// OnPublish records an upstream PUBLISH, applies the rate check and hands
// it to the platform goroutine. Policy topics are also routed by the
// broker as usual. When the inbox is full it waits, which
// holds back this client's reads (and its PUBACK) like TCP backpressure.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	s := h.s
	now := s.now()
	s.mu.Lock()
	c := s.byClient[cl]
	if c == nil {
		s.mu.Unlock()
		return pk, nil
	}
	_, kind, _, _ := iotda.ParseTopic(pk.TopicName)
	s.rec.publishes.add(Publish{Gateway: c.gw, Topic: pk.TopicName, Kind: kind, Size: len(pk.Payload), QoS: pk.FixedHeader.Qos, At: now})
	if len(c.window) > 0 {
		// c.window[c.next] is the oldest of the last len(window)
		// publishes: if it is less than a second old, this one is over
		// the cap (iotda-protocol §7: 50 messages/s per connection).
		oldest := c.window[c.next]
		if !oldest.IsZero() && now.Sub(oldest) < time.Second {
			s.violations++
		}
		c.window[c.next] = now
		c.next = (c.next + 1) % len(c.window)
	}
	gw, stop := c.gw, s.stop
	s.notifyLocked()
	s.mu.Unlock()
	u := uplink{gw: gw, topic: pk.TopicName, payload: bytes.Clone(pk.Payload), at: now}
	// The platform goroutine runs until this connection has ended (see
	// Sim.shutdown); stop only guards against a bug there.
	select {
	case s.inbox <- u:
	case <-stop:
	}
	if strings.HasPrefix(pk.TopicName, iotda.TopicPrefix) {
		// Upstream $oc topics go to the platform, never back to devices:
		// without this a device subscribed to sys/commands/# would get its
		// own command responses. mochi still sends the PUBACK.
		return pk, packets.CodeSuccessIgnore
	}
	return pk, nil
}
