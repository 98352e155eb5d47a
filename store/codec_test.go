package store

import (
	"bytes"
	"testing"
	"time"

	"github.com/subgate/subgate/subdevice"
)

func TestItemCodecRoundTrip(t *testing.T) {
	items := []Item{
		{Kind: KindMessage, DeviceID: "d", Payload: []byte("x"), Enqueued: time.Unix(0, 0)},
		{Kind: KindCustom, DeviceID: "prod_node-1", Topic: "$oc/devices/gw/user/up", Payload: []byte(`{"a":1}`), Enqueued: time.Unix(1700000000, 123456789)},
		{Kind: KindEvent, DeviceID: string(bytes.Repeat([]byte("d"), subdevice.MaxDeviceIDLen)), Payload: bytes.Repeat([]byte("p"), 300), Enqueued: maxEnqueued},
	}
	for _, in := range items {
		if err := checkItem(&in, 1<<20); err != nil {
			t.Fatalf("checkItem(%+v): %v", in, err)
		}
		rec := appendItem(nil, &in)
		if len(rec) != encodedItemLen(&in) {
			t.Fatalf("encodedItemLen %d, record %d", encodedItemLen(&in), len(rec))
		}
		out, err := decodeItem(7, rec)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if out.Seq != 7 || out.Kind != in.Kind || out.DeviceID != in.DeviceID || out.Topic != in.Topic ||
			!bytes.Equal(out.Payload, in.Payload) || !out.Enqueued.Equal(in.Enqueued) {
			t.Fatalf("round trip %+v -> %+v", in, out)
		}
		if n, err := payloadLen(rec); err != nil || n != len(in.Payload) {
			t.Fatalf("payloadLen = %d %v", n, err)
		}
		// The decoded item shares no memory with the record.
		rec[len(rec)-1] ^= 0xff
		if out.Payload[len(out.Payload)-1] != in.Payload[len(in.Payload)-1] {
			t.Fatal("decoded payload aliases the record")
		}
	}
}

func TestItemDecodeRejects(t *testing.T) {
	good := appendItem(nil, &Item{Kind: KindCustom, DeviceID: "dev", Topic: "t", Payload: []byte("p"), Enqueued: time.Unix(1, 0)})
	cases := map[string][]byte{
		"empty":           nil,
		"short":           good[:5],
		"format":          append([]byte{2}, good[1:]...),
		"kind":            append([]byte{itemFormatV1, 0}, good[2:]...),
		"device overrun":  append(append([]byte(nil), good[:itemHeaderMin]...), 100, 'd'),
		"no device":       append(append([]byte(nil), good[:itemHeaderMin]...), 0, 0),
		"bad varint":      append(append([]byte(nil), good[:itemHeaderMin]...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
		"topic truncated": good[:itemHeaderMin+1+3],
	}
	for name, b := range cases {
		if _, err := decodeItem(1, b); err == nil {
			t.Errorf("%s: decoded", name)
		}
		if _, err := payloadLen(b); err == nil {
			t.Errorf("%s: payloadLen succeeded", name)
		}
	}
}

func TestDeviceDecodeRejects(t *testing.T) {
	d := subdevice.Device{NodeID: "n", DeviceID: "p_n", Status: subdevice.Online}
	rec, err := encodeDevice(&d)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := decodeDevice([]byte("p_n"), rec); err != nil || got != d {
		t.Fatalf("decode = %+v %v", got, err)
	}
	cases := map[string][]byte{
		"empty":       nil,
		"format":      append([]byte{9}, rec[1:]...),
		"bad json":    []byte{deviceFormatV1, '{'},
		"key differs": rec,
	}
	for name, b := range cases {
		key := []byte("p_n")
		if name == "key differs" {
			key = []byte("other")
		}
		if _, err := decodeDevice(key, b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func FuzzDecodeItem(f *testing.F) {
	f.Add(appendItem(nil, &Item{Kind: KindMessage, DeviceID: "d", Payload: []byte("x"), Enqueued: time.Unix(5, 0)}))
	f.Add(appendItem(nil, &Item{Kind: KindCustom, DeviceID: "dev-1", Topic: "a/b", Payload: []byte(`{"k":"v"}`), Enqueued: time.Unix(1700000000, 1)}))
	f.Add([]byte{itemFormatV1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0x80})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		it, err := decodeItem(1, b)
		n, perr := payloadLen(b)
		if (err == nil) != (perr == nil) {
			t.Fatalf("decodeItem err %v, payloadLen err %v", err, perr)
		}
		if err != nil {
			return
		}
		if n != len(it.Payload) {
			t.Fatalf("payloadLen %d, payload %d", n, len(it.Payload))
		}
		// Re-encoding gives a record that decodes to the same item (the
		// bytes may differ only in non-minimal varints).
		again, err := decodeItem(1, appendItem(nil, &it))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if again.Kind != it.Kind || again.DeviceID != it.DeviceID || again.Topic != it.Topic ||
			!bytes.Equal(again.Payload, it.Payload) || !again.Enqueued.Equal(it.Enqueued) {
			t.Fatalf("round trip %+v -> %+v", it, again)
		}
	})
}

func FuzzItemRoundTrip(f *testing.F) {
	f.Add(uint8(KindMessage), "dev", "", []byte("p"), int64(1))
	f.Add(uint8(KindCustom), "prod_node", "$oc/devices/x/user/y", []byte(`{}`), int64(1700000000000000000))
	f.Fuzz(func(t *testing.T, kind uint8, devID, topic string, payload []byte, ns int64) {
		in := Item{Kind: Kind(kind), DeviceID: devID, Topic: topic, Payload: payload, Enqueued: time.Unix(0, ns)}
		if checkItem(&in, 1<<20) != nil {
			return
		}
		rec := appendItem(nil, &in)
		out, err := decodeItem(3, rec)
		if err != nil {
			t.Fatalf("decode valid item: %v", err)
		}
		if out.Kind != in.Kind || out.DeviceID != in.DeviceID || out.Topic != in.Topic ||
			!bytes.Equal(out.Payload, in.Payload) || !out.Enqueued.Equal(in.Enqueued) || out.Seq != 3 {
			t.Fatalf("round trip %+v -> %+v", in, out)
		}
	})
}

func FuzzDecodeDevice(f *testing.F) {
	rec, _ := encodeDevice(&subdevice.Device{NodeID: "n", DeviceID: "k", Status: subdevice.Offline})
	f.Add([]byte("k"), rec)
	f.Add([]byte("k"), []byte{deviceFormatV1, 'n', 'u', 'l', 'l'})
	f.Add([]byte(""), []byte{})
	f.Fuzz(func(t *testing.T, key, b []byte) {
		d, err := decodeDevice(key, b)
		if err != nil {
			return
		}
		if d.DeviceID != string(key) {
			t.Fatalf("decoded device id %q under key %q", d.DeviceID, key)
		}
		again, err := encodeDevice(&d)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if _, err := decodeDevice(key, again); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
	})
}
