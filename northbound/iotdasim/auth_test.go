package iotdasim

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

func TestConnectAuth(t *testing.T) {
	now := time.Date(2025, 4, 14, 1, 30, 0, 0, time.UTC)
	s := newSim(t, func(c *Config) {
		c.CheckTimestamp = true
		c.Clock = func() time.Time { return now }
	})
	signed := func(signType int, ts string) connectPkt {
		return connectPkt{clientID: iotda.ClientID(gw1, signType, ts), username: gw1,
			password: iotda.Password(secret1, ts), keepalive: 120}
	}
	for _, tc := range []struct {
		name string
		pkt  func() connectPkt
		want byte
		err  string
	}{
		{"good", func() connectPkt { return goodConnect(gw1, secret1) }, 0x00, ""},
		{"sign type 1 current hour", func() connectPkt { return signed(1, "2025041401") }, 0x00, ""},
		{"sign type 1 previous hour", func() connectPkt { return signed(1, "2025041400") }, 0x00, ""},
		{"sign type 1 stale", func() connectPkt { return signed(1, "2025041322") }, 0x04, "not the current hour"},
		{"sign type 0 stale is not checked", func() connectPkt { return signed(0, "2020010100") }, 0x00, ""},
		{"bad password", func() connectPkt { p := goodConnect(gw1, "wrong"); return p }, 0x04, "bad password"},
		{"password of other ts", func() connectPkt {
			p := goodConnect(gw1, secret1)
			p.password = iotda.Password(secret1, "2025041402")
			return p
		}, 0x04, "bad password"},
		{"no password", func() connectPkt { p := goodConnect(gw1, secret1); p.password = ""; return p }, 0x04, "bad password"},
		{"unknown device", func() connectPkt { return goodConnect("nobody", "x") }, 0x04, "unknown device"},
		{"username mismatch", func() connectPkt { p := goodConnect(gw1, secret1); p.username = gw2; return p }, 0x04, "username"},
		{"malformed client id", func() connectPkt { p := goodConnect(gw1, secret1); p.clientID = "gw1"; return p }, 0x02, "client id"},
		{"id type 2", func() connectPkt {
			p := goodConnect(gw1, secret1)
			p.clientID = "gw1_2_0_" + fixedTS
			return p
		}, 0x02, "id type"},
		{"keepalive too short", func() connectPkt { p := goodConnect(gw1, secret1); p.keepalive = 29; return p }, 0x02, "keepalive"},
		{"keepalive too long", func() connectPkt { p := goodConnect(gw1, secret1); p.keepalive = 1201; return p }, 0x02, "keepalive"},
		{"keepalive zero", func() connectPkt { p := goodConnect(gw1, secret1); p.keepalive = 0; return p }, 0x02, "keepalive"},
		{"will", func() connectPkt { p := goodConnect(gw1, secret1); p.will = true; return p }, 0x05, "will"},
		{"sm3", func() connectPkt { return signed(2, fixedTS) }, 0x04, "SM3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(s.Errors())
			if got := rawConnectTCP(t, s.Addr(), tc.pkt()); got != tc.want {
				t.Fatalf("CONNACK 0x%02x, want 0x%02x (errors %q)", got, tc.want, s.Errors())
			}
			errs := s.Errors()
			if tc.err == "" {
				if len(errs) != before {
					t.Fatalf("unexpected errors %q", errs[before:])
				}
				return
			}
			if len(errs) != before+1 || !strings.Contains(errs[before], tc.err) {
				t.Fatalf("errors %q, want one containing %q", errs[before:], tc.err)
			}
		})
	}
}

func TestPahoLoginAndRefusal(t *testing.T) {
	s := newSim(t, nil)
	connectDevice(t, s, gw1, secret1)
	if _, err := dial(t, s.Addr(), gw2, "wrong", nil); err == nil || !strings.Contains(err.Error(), "bad user name or password") {
		t.Fatalf("bad secret: err = %v", err)
	}
	if s.Connected(gw2) {
		t.Fatal("gw2 connected with a bad secret")
	}
}

func TestOneConnectionPerDevice(t *testing.T) {
	s := newSim(t, nil)
	first := connectDevice(t, s, gw1, secret1)
	// A second login with another client id (another hour) replaces the
	// first connection (iotda-protocol §1.1).
	second, err := dial(t, s.Addr(), gw1, secret1, func(o *pahoOptions) {
		o.SetClientID(iotda.ClientID(gw1, 0, "2025041402"))
		o.SetPassword(iotda.Password(secret1, "2025041402"))
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "second connection", func(v *View) bool { return v.Connects(gw1) == 2 && v.Connected(gw1) })
	first.waitLost()
	if !second.c.IsConnectionOpen() {
		t.Fatal("second connection closed")
	}
	if err := s.Disconnect(gw1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "kick", func(v *View) bool { return !v.Connected(gw1) })
	if err := s.Disconnect(gw1); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Disconnect of a disconnected gateway: %v", err)
	}
}
