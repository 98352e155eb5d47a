package gateway

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
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
	pubs, _ := g.pack(units(items...), nil)
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
	pubs, _ = g.pack(units(
		propItem(1, "a", "s", `{"v":1}`),
		propItem(2, "b", "s", `{"v":1}`),
		propItem(3, "a", "s", `{"v":2}`),
		store.Item{Seq: 4, Kind: store.KindMessage, DeviceID: "a", Payload: []byte(`{"object_device_id":"a","content":"x"}`)},
	), nil)
	if len(pubs) != 3 || pubs[0].devices != 2 || pubs[1].devices != 1 || pubs[2].kind != "message" {
		t.Fatalf("order-preserving split: %+v", pubs)
	}
}

// TestPackKeepsTail: with keep, only full batches go out and the partial
// last one comes back; without a publish in the window nothing is kept.
func TestPackKeepsTail(t *testing.T) {
	g := packGateway()
	var items []store.Item
	for i := range 250 {
		items = append(items, propItem(uint64(i+1), fmt.Sprintf("d%03d", i), "s", `{"v":1}`))
	}
	always := func([]unit) bool { return true }
	pubs, kept := g.pack(units(items...), always)
	if len(pubs) != 2 || pubs[0].devices != 100 || pubs[1].devices != 100 || len(kept) != 50 {
		t.Fatalf("kept tail: %d publishes, %d kept", len(pubs), len(kept))
	}
	if kept[0].it.Seq != 201 || kept[49].it.Seq != 250 {
		t.Fatalf("kept the wrong reports: %d..%d", kept[0].it.Seq, kept[49].it.Seq)
	}
	pubs, kept = g.pack(units(items[:40]...), always)
	if len(pubs) != 1 || pubs[0].devices != 40 || kept != nil {
		t.Fatalf("a window without a full batch must still publish: %d publishes, %d kept", len(pubs), len(kept))
	}
	pubs, kept = g.pack(units(items...), func([]unit) bool { return false })
	if len(pubs) != 3 || kept != nil {
		t.Fatalf("keep refused: %d publishes, %d kept", len(pubs), len(kept))
	}
}

// TestPackOrderProperty packs random windows (few devices, many repeats,
// some messages) with and without keeping the tail and checks the rules:
// ≤100 devices and each device once per batch, every item exactly once in
// a publish or the kept tail, and per device the published reports in
// order and all before its kept ones.
func TestPackOrderProperty(t *testing.T) {
	g := packGateway()
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 7))
		nDev := 1 + r.IntN(300)
		var items []store.Item
		for i := range 50 + r.IntN(1500) {
			dev := fmt.Sprintf("d%d", r.IntN(nDev))
			seq := uint64(i + 1)
			if r.IntN(40) == 0 {
				items = append(items, store.Item{Seq: seq, Kind: store.KindMessage, DeviceID: dev,
					Payload: []byte(fmt.Sprintf(`{"object_device_id":%q,"content":"x"}`, dev))})
				continue
			}
			items = append(items, propItem(seq, dev, "s", `{"v":1}`))
		}
		var keep func([]unit) bool
		if seed%2 == 1 {
			keep = func([]unit) bool { return true }
		}
		pubs, kept := g.pack(units(items...), keep)
		byDev := map[string][]uint64{} // published seqs per device, in publish order
		seen := map[uint64]bool{}
		devOf := map[uint64]string{}
		for _, it := range items {
			devOf[it.Seq] = it.DeviceID
		}
		for _, p := range pubs {
			if p.devices > iotda.MaxBatchDevices {
				t.Fatalf("seed %d: %d devices in one publish", seed, p.devices)
			}
			inBatch := map[string]bool{}
			for _, s := range p.seqs {
				d := devOf[s]
				if inBatch[d] {
					t.Fatalf("seed %d: device %s twice in one publish", seed, d)
				}
				inBatch[d] = true
				if seen[s] {
					t.Fatalf("seed %d: seq %d published twice", seed, s)
				}
				seen[s] = true
				byDev[d] = append(byDev[d], s)
			}
		}
		for d, seqs := range byDev {
			if !slices.IsSorted(seqs) {
				t.Fatalf("seed %d: device %s published out of order: %v", seed, d, seqs)
			}
		}
		for _, u := range kept {
			s := u.it.Seq
			if seen[s] {
				t.Fatalf("seed %d: seq %d both published and kept", seed, s)
			}
			seen[s] = true
			if ps := byDev[u.it.DeviceID]; len(ps) > 0 && ps[len(ps)-1] > s {
				t.Fatalf("seed %d: device %s published %d after kept %d", seed, u.it.DeviceID, ps[len(ps)-1], s)
			}
		}
		if len(seen) != len(items) {
			t.Fatalf("seed %d: %d of %d items accounted for", seed, len(seen), len(items))
		}
		if keep == nil && kept != nil {
			t.Fatalf("seed %d: kept without keep", seed)
		}
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
	pubs, _ := g.pack(units(items...), nil)
	for _, p := range pubs {
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
