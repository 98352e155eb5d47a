package gateway

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/store"
)

func propItem(seq uint64, dev, svc string, props string) store.Item {
	return store.Item{Seq: seq, Kind: store.KindProperties, DeviceID: dev,
		Payload: json.RawMessage(fmt.Sprintf(`[{"service_id":%q,"properties":%s}]`, svc, props))}
}

func units(items ...store.Item) []unit {
	out := make([]unit, len(items))
	for i, it := range items {
		out[i] = unit{it: it, seqs: []uint64{it.Seq}}
	}
	return out
}

func packGateway() *Gateway {
	cfg := DefaultConfig()
	return &Gateway{cfg: cfg, gw: "gw"}
}

// TestPackBatches: ≤100 devices per batch report, each device once per
// batch, a message of a device in the open batch closes the batch first.
func TestPackBatches(t *testing.T) {
	g := packGateway()
	var items []store.Item
	seq := uint64(0)
	for i := range 250 {
		seq++
		items = append(items, propItem(seq, fmt.Sprintf("d%03d", i), "s", `{"v":1}`))
	}
	pubs := g.pack(units(items...))
	if len(pubs) != 3 || pubs[0].devices != 100 || pubs[1].devices != 100 || pubs[2].devices != 50 {
		t.Fatalf("batches: %d (%+v)", len(pubs), pubs)
	}
	for _, p := range pubs {
		var bp iotda.BatchProperties
		if err := json.Unmarshal(p.payload, &bp); err != nil || len(bp.Devices) != p.devices || len(p.seqs) != p.devices {
			t.Fatalf("batch payload: %v %+v", err, p)
		}
		if err := bp.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	// Same device twice: second report starts a new batch; a message of a
	// device in the batch closes it first.
	pubs = g.pack(units(
		propItem(1, "a", "s", `{"v":1}`),
		propItem(2, "b", "s", `{"v":1}`),
		propItem(3, "a", "s", `{"v":2}`),
		store.Item{Seq: 4, Kind: store.KindMessage, DeviceID: "a", Payload: []byte(`{"object_device_id":"a","content":"x"}`)},
	))
	if len(pubs) != 3 || pubs[0].devices != 2 || pubs[1].devices != 1 || pubs[2].kind != "message" {
		t.Fatalf("order-preserving split: %+v", pubs)
	}
}

// TestPackSizeLimit: a batch never exceeds the publish limit.
func TestPackSizeLimit(t *testing.T) {
	g := packGateway()
	g.cfg.Northbound.MaxPublishBytes = 8192
	big := fmt.Sprintf(`{"blob":%q}`, make([]byte, 1000))
	var items []store.Item
	for i := range 30 {
		items = append(items, propItem(uint64(i+1), fmt.Sprintf("d%d", i), "s", big))
	}
	for _, p := range g.pack(units(items...)) {
		if len(p.payload) > 8192 {
			t.Fatalf("publish of %d bytes above the limit", len(p.payload))
		}
	}
}

// TestCoalesce keeps the latest value per device and service, and every
// sequence number so the outbox acks them all.
func TestCoalesce(t *testing.T) {
	out := coalesce(units(
		propItem(1, "a", "s", `{"x":1,"y":1}`),
		propItem(2, "b", "s", `{"x":5}`),
		propItem(3, "a", "s", `{"x":2}`),
		propItem(4, "a", "t", `{"z":9}`),
	))
	if len(out) != 2 {
		t.Fatalf("units = %d", len(out))
	}
	if got := fmt.Sprint(out[0].seqs); got != "[1 3 4]" {
		t.Fatalf("seqs of a = %s", got)
	}
	var svcs []iotda.Service
	json.Unmarshal(out[0].it.Payload, &svcs)
	if len(svcs) != 2 || string(svcs[0].Properties) != `{"x":2,"y":1}` || string(svcs[1].Properties) != `{"z":9}` {
		t.Fatalf("merged = %s", out[0].it.Payload)
	}
}
