package northbound

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// TestWireConnCountsPublishes writes the packets paho writes and counts
// only the PUBLISHes.
func TestWireConnCountsPublishes(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	go func() { _, _ = io.Copy(io.Discard, b) }()
	n := 0
	c := &wireConn{Conn: a, wrote: func() { n++ }}
	defer c.Close()

	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.TopicName, pub.Qos, pub.MessageID, pub.Payload = "$oc/devices/gw/sys/gateway/sub_devices/properties/report", 1, 7, bytes.Repeat([]byte("x"), 3000)
	ack := packets.NewControlPacket(packets.Puback).(*packets.PubackPacket)
	ack.MessageID = 9
	ping := packets.NewControlPacket(packets.Pingreq)
	sub := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
	sub.Topics, sub.Qoss, sub.MessageID = []string{"$oc/devices/gw/sys/commands/#"}, []byte{1}, 3
	for _, p := range []packets.ControlPacket{pub, ack, ping, sub, pub, pub} {
		if err := p.Write(c); err != nil {
			t.Fatal(err)
		}
	}
	if n != 3 {
		t.Fatalf("counted %d publishes, want 3", n)
	}
}
