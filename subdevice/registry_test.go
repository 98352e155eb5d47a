package subdevice

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// TestRecordSize holds the per-device record to the 80-byte size class.
func TestRecordSize(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("sizes are for 64-bit platforms")
	}
	if n := unsafe.Sizeof(record{}); n != 80 {
		t.Fatalf("record is %d bytes, want 80", n)
	}
}

// TestRecordRoundTrip: every field comes back as it was put, including
// the values the compact form keeps out of line.
func TestRecordRoundTrip(t *testing.T) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 8, time.UTC)
	cases := []Device{
		{NodeID: "n", DeviceID: "d"},
		{NodeID: "n", DeviceID: "d", ProductID: "p", Name: "n", Description: "registered",
			Status: Online, FwVersion: "1.0", SwVersion: "2.0", Remote: "127.0.0.1:9",
			ConnectedAt: at, LastSeen: at.Add(time.Second)},
		{NodeID: "n", DeviceID: "d", Name: "other name", Status: "SOMETHING", LastSeen: time.Unix(0, 0)},
		{NodeID: "n", DeviceID: "d", Description: strings.Repeat("x", maxInternLen+1), Status: Inactive},
		{NodeID: "n", DeviceID: "d", Status: Offline, ConnectedAt: time.Unix(-1, 0)},
	}
	for i, in := range cases {
		r := NewRegistry(0, []Device{in})
		out, ok := r.ByID("d")
		if !ok || !sameDevice(in, out) {
			t.Errorf("case %d: put %+v, got %+v", i, in, out)
		}
	}
}

func sameDevice(a, b Device) bool {
	return a.NodeID == b.NodeID && a.DeviceID == b.DeviceID && a.ProductID == b.ProductID &&
		a.Name == b.Name && a.Description == b.Description && a.Status == b.Status &&
		a.FwVersion == b.FwVersion && a.SwVersion == b.SwVersion && a.Remote == b.Remote &&
		a.ConnectedAt.Equal(b.ConnectedAt) && a.LastSeen.Equal(b.LastSeen) &&
		a.ConnectedAt.IsZero() == b.ConnectedAt.IsZero() && a.LastSeen.IsZero() == b.LastSeen.IsZero()
}

// TestTimesClamped: times that Unix nanoseconds cannot hold are clamped,
// and never turn into the zero time.
func TestTimesClamped(t *testing.T) {
	r := NewRegistry(0, []Device{{NodeID: "n", DeviceID: "d",
		ConnectedAt: time.Date(1500, 1, 1, 0, 0, 0, 0, time.UTC), LastSeen: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}})
	d, _ := r.ByID("d")
	if d.ConnectedAt.IsZero() || !d.ConnectedAt.Equal(minNanos) || !d.LastSeen.Equal(maxNanos) {
		t.Fatalf("got %v %v", d.ConnectedAt, d.LastSeen)
	}
}

// TestInternTableFull: once the table is full, new strings are kept in the
// records and still read back.
func TestInternTableFull(t *testing.T) {
	r := NewRegistry(0, nil)
	for i := range maxInterned + 10 {
		r.Put(Device{NodeID: fmt.Sprint("n", i), DeviceID: fmt.Sprint("d", i), FwVersion: fmt.Sprint("v", i)})
	}
	if len(r.strs.strs) != maxInterned {
		t.Fatalf("intern table holds %d strings, bound %d", len(r.strs.strs), maxInterned)
	}
	for _, i := range []int{0, maxInterned - 1, maxInterned, maxInterned + 9} {
		if d, ok := r.ByID(fmt.Sprint("d", i)); !ok || d.FwVersion != fmt.Sprint("v", i) || d.NodeID != fmt.Sprint("n", i) {
			t.Fatalf("device %d: %+v %v", i, d, ok)
		}
	}
}

// TestUpdateChangesIdentifiers: an Update that changes the ids re-indexes
// the record.
func TestUpdateChangesIdentifiers(t *testing.T) {
	r := NewRegistry(0, []Device{dev("a", Online), dev("b", Online)})
	got, ok := r.Update("p_a", func(d *Device) { d.NodeID, d.DeviceID = "c", "p_c" })
	if !ok || got.NodeID != "c" || got.DeviceID != "p_c" || r.Len() != 2 {
		t.Fatalf("update = %+v %v, len %d", got, ok, r.Len())
	}
	if _, ok := r.ByNode("a"); ok {
		t.Fatal("old node id still indexed")
	}
	if _, ok := r.ByID("p_a"); ok {
		t.Fatal("old device id still indexed")
	}
	if d, ok := r.ByNode("c"); !ok || d.DeviceID != "p_c" {
		t.Fatalf("new node id: %+v %v", d, ok)
	}
}

// TestIndexAgainstMap drives the indexes with random puts, remaps and
// deletes (growing and shrinking the tables) and checks them against Go
// maps after every step.
func TestIndexAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	r := NewRegistry(0, nil)
	byNode := map[string]string{} // node id -> device id
	byID := map[string]string{}   // device id -> node id
	const keys = 600
	for step := range 20000 {
		node := fmt.Sprint("n", rng.IntN(keys))
		id := fmt.Sprint("d", rng.IntN(keys))
		switch op := rng.IntN(10); {
		case op < 5 || step < 2000 && op < 8:
			r.Put(Device{NodeID: node, DeviceID: id})
			if old, ok := byID[id]; ok {
				delete(byNode, old)
			}
			if old, ok := byNode[node]; ok {
				delete(byID, old)
			}
			byNode[node], byID[id] = id, node
		default:
			_, ok := r.Delete(id)
			if _, want := byID[id]; ok != want {
				t.Fatalf("step %d: delete %s = %v, want %v", step, id, ok, want)
			}
			delete(byNode, byID[id])
			delete(byID, id)
		}
		if r.Len() != len(byID) || r.byNode.n != len(byNode) {
			t.Fatalf("step %d: len %d/%d, want %d", step, r.Len(), r.byNode.n, len(byID))
		}
		if step%97 != 0 {
			continue
		}
		for i := range keys {
			n, d := fmt.Sprint("n", i), fmt.Sprint("d", i)
			got, ok := r.ByNode(n)
			if want, wok := byNode[n]; ok != wok || ok && got.DeviceID != want {
				t.Fatalf("step %d: ByNode(%s) = %q %v, want %q %v", step, n, got.DeviceID, ok, want, wok)
			}
			got, ok = r.ByID(d)
			if want, wok := byID[d]; ok != wok || ok && got.NodeID != want {
				t.Fatalf("step %d: ByID(%s) = %q %v, want %q %v", step, d, got.NodeID, ok, want, wok)
			}
		}
	}
	for _, id := range r.All() {
		r.Delete(id.DeviceID)
	}
	if r.Len() != 0 || len(r.byID.slots) != minSlots || len(r.byNode.slots) != minSlots {
		t.Fatalf("emptied registry: len %d, slots %d/%d", r.Len(), len(r.byID.slots), len(r.byNode.slots))
	}
}

// BenchmarkByID measures the read path of every uplink frame.
func BenchmarkByID(b *testing.B) {
	devs := make([]Device, 50000)
	for i := range devs {
		devs[i] = dev(fmt.Sprintf("node%06d", i), Offline)
	}
	r := NewRegistry(1, devs)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := r.ByID(devs[i%len(devs)].DeviceID); !ok {
			b.Fatal("missing")
		}
		i++
	}
}
