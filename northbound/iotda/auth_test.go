package iotda

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPasswordVector(t *testing.T) {
	// Test vector from iotda-protocol §1.2.
	const want = "c75150e6cb841417396819e4d2ee4358a416344a03a083e3a8567074ddec820a"
	if got := Password("12345678", "2025041401"); got != want {
		t.Fatalf("Password = %s, want %s", got, want)
	}
}

func TestTimestampIsUTC(t *testing.T) {
	loc := time.FixedZone("UTC+8", 8*3600)
	tm := time.Date(2018, 7, 25, 1, 56, 20, 0, loc) // 2018-07-24 17:56:20 UTC
	if got := Timestamp(tm); got != "2018072417" {
		t.Fatalf("Timestamp = %s, want 2018072417", got)
	}
	if got := EventTime(tm); got != "20180724T175620Z" {
		t.Fatalf("EventTime = %s", got)
	}
}

func TestClientIDRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		id   string
		sign int
	}{
		{"gw1", 0},
		{"product_node_with_underscores", 1},
		{"a-b_c", 2},
	} {
		cid := ClientID(tc.id, tc.sign, "2025041401")
		id, sign, ts, err := ParseClientID(cid)
		if err != nil {
			t.Fatalf("ParseClientID(%q): %v", cid, err)
		}
		if id != tc.id || sign != tc.sign || ts != "2025041401" {
			t.Fatalf("ParseClientID(%q) = %q %d %q", cid, id, sign, ts)
		}
	}
	if got := ClientID("gw1", 1, "2025041401"); got != "gw1_0_1_2025041401" {
		t.Fatalf("ClientID = %s", got)
	}
}

func TestParseClientIDErrors(t *testing.T) {
	for _, cid := range []string{
		"",
		"gw1",
		"gw1_0_0",
		"gw1_0_0_202504140",   // 9 digits
		"gw1_0_0_2025041424",  // hour 24
		"gw1_0_0_2025x41401",  // not digits
		"gw1_2_0_2025041401",  // id type 2 is not allowed
		"gw1_0_3_2025041401",  // sign type 3
		"gw1_0_01_2025041401", // sign type two digits
		"_0_0_2025041401",     // empty device id
		"g w_0_0_2025041401",  // bad device id byte
		"0_0_2025041401",      // no id type
		strings.Repeat("a", 129) + "_0_0_2025041401",
	} {
		if _, _, _, err := ParseClientID(cid); !errors.Is(err, ErrBadClientID) {
			t.Errorf("ParseClientID(%q) err = %v, want ErrBadClientID", cid, err)
		}
	}
}

func TestParseEventTime(t *testing.T) {
	want := time.Date(2015, 12, 12, 12, 12, 12, 0, time.UTC)
	for _, s := range []string{"20151212T121212Z", "2015-12-12T12:12:12.000Z"} {
		got, err := ParseEventTime(s)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseEventTime(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "20151212121212", "2015-12-12T12:12:12Z", "20151312T121212Z"} {
		if _, err := ParseEventTime(s); !errors.Is(err, ErrBadField) {
			t.Errorf("ParseEventTime(%q) err = %v", s, err)
		}
	}
}

func TestSyncedNow(t *testing.T) {
	// Values from iotda-protocol §5.2 with a device receive time.
	p := TimeSyncResponseParas{DeviceSendTime: 1582685678789, ServerRecvTime: 1582685696152, ServerSendTime: 1582685708109}
	const recv = 1582685679000
	want := int64((1582685696152 + 1582685708109 + recv - 1582685678789) / 2)
	if got := SyncedNow(p, recv); got != want {
		t.Fatalf("SyncedNow = %d, want %d", got, want)
	}
	// Symmetric link: device and server clocks agree, 10 ms each way.
	p = TimeSyncResponseParas{DeviceSendTime: 1000, ServerRecvTime: 1010, ServerSendTime: 1010}
	if got := SyncedNow(p, 1020); got != 1020 {
		t.Fatalf("SyncedNow symmetric = %d, want 1020", got)
	}
}

func TestLogConfigEnd(t *testing.T) {
	want := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, s := range []string{"20240101T000000Z", "2024-01-01T00:00:00Z"} {
		got, ok := LogConfigParas{Switch: "on", EndTime: s}.End()
		if !ok || !got.Equal(want) {
			t.Errorf("End(%q) = %v %v", s, got, ok)
		}
	}
	if _, ok := (LogConfigParas{EndTime: "tomorrow"}).End(); ok {
		t.Error("End accepted garbage")
	}
}

func BenchmarkPassword(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		Password("12345678", "2025041401")
	}
}
