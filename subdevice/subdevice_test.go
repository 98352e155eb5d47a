package subdevice

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestValidateIDs(t *testing.T) {
	for _, ok := range []string{"a", "node_1", "A-b_9", strings.Repeat("x", 64)} {
		if err := ValidateNodeID(ok); err != nil {
			t.Errorf("ValidateNodeID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "a/b", "é", strings.Repeat("x", 65), "a|b"} {
		if err := ValidateNodeID(bad); !errors.Is(err, ErrBadNodeID) {
			t.Errorf("ValidateNodeID(%q) = %v, want ErrBadNodeID", bad, err)
		}
	}
	if err := ValidateDeviceID(strings.Repeat("d", 128)); err != nil {
		t.Error(err)
	}
	if err := ValidateDeviceID(strings.Repeat("d", 129)); !errors.Is(err, ErrBadDeviceID) {
		t.Error(err)
	}
	if err := ValidateProductID(strings.Repeat("p", 37)); !errors.Is(err, ErrBadProductID) {
		t.Error(err)
	}
}

func dev(node string, st Status) Device {
	return Device{NodeID: node, DeviceID: "p_" + node, ProductID: "p", Status: st}
}

// TestVersionRule: notifications with 0 < v <= local are rejected
// (iotda-protocol §3.10); v == 0 always applies; applying twice is harmless.
func TestVersionRule(t *testing.T) {
	r := NewRegistry(5, []Device{dev("a", Online)})
	if r.ApplyAdd(5, []Device{dev("b", Inactive)}) {
		t.Fatal("stale add applied")
	}
	if _, ok := r.ByNode("b"); ok {
		t.Fatal("stale add changed the registry")
	}
	if !r.ApplyAdd(6, []Device{dev("b", Inactive)}) || r.Version() != 6 {
		t.Fatalf("add v6: version %d", r.Version())
	}
	if !r.ApplyAdd(0, []Device{dev("c", Inactive)}) || r.Version() != 6 {
		t.Fatal("unversioned add must apply and keep the version")
	}
	if removed, ok := r.ApplyDelete(6, []string{"p_b"}); ok || removed != nil {
		t.Fatal("stale delete applied")
	}
	removed, ok := r.ApplyDelete(7, []string{"p_b", "p_missing"})
	if !ok || len(removed) != 1 || removed[0].NodeID != "b" {
		t.Fatalf("delete v7 = %v, %v", removed, ok)
	}
	if _, ok := r.ByID("p_b"); ok {
		t.Fatal("deleted device still there")
	}
	if _, ok := r.ByNode("b"); ok {
		t.Fatal("deleted device still indexed by node")
	}
}

// TestApplyAddKeepsLocalState: a notification refreshes platform fields but
// keeps what the gateway knows about the connection.
func TestApplyAddKeepsLocalState(t *testing.T) {
	d := dev("a", Online)
	d.Remote = "127.0.0.9:1234"
	r := NewRegistry(1, []Device{d})
	upd := dev("a", "")
	upd.Name = "renamed"
	r.ApplyAdd(2, []Device{upd})
	got, _ := r.ByID("p_a")
	if got.Remote != d.Remote || got.Status != Online || got.Name != "renamed" {
		t.Fatalf("got %+v", got)
	}
}

// TestRemapNode: a device id that moves to another node id (or the
// reverse) leaves no stale index entry.
func TestRemapNode(t *testing.T) {
	r := NewRegistry(0, []Device{dev("a", Online)})
	r.Put(Device{NodeID: "a2", DeviceID: "p_a"})
	if _, ok := r.ByNode("a"); ok {
		t.Fatal("old node id still indexed")
	}
	if d, ok := r.ByNode("a2"); !ok || d.DeviceID != "p_a" || r.Len() != 1 {
		t.Fatalf("remap failed: %+v %v len %d", d, ok, r.Len())
	}
}

func TestListFilterAndPaging(t *testing.T) {
	var devs []Device
	for i := range 25 {
		st := Offline
		if i%5 == 0 {
			st = Online
		}
		devs = append(devs, dev(fmt.Sprintf("n%02d", i), st))
	}
	r := NewRegistry(0, devs)
	page, total := r.List(Filter{}, 20, 10)
	if total != 25 || len(page) != 5 || page[0].NodeID != "n20" {
		t.Fatalf("page = %v total %d", page, total)
	}
	on, total := r.List(Filter{Status: Online}, 0, 0)
	if total != 5 || len(on) != 5 {
		t.Fatalf("online = %d", total)
	}
	if _, total := r.List(Filter{Prefix: "p_n1"}, 0, 0); total != 10 {
		t.Fatalf("prefix total = %d", total)
	}
	if c := r.CountByStatus(); c[Online] != 5 || c[Offline] != 20 || c[Inactive] != 0 {
		t.Fatalf("counts = %v", c)
	}
	if p, _ := r.List(Filter{}, 99, 10); p != nil {
		t.Fatal("offset past the end returns nothing")
	}
}

func TestUpdateAndDelete(t *testing.T) {
	r := NewRegistry(0, []Device{dev("a", Offline)})
	got, ok := r.Update("p_a", func(d *Device) { d.Status = Online })
	if !ok || got.Status != Online {
		t.Fatal("update failed")
	}
	if _, ok := r.Update("nope", func(*Device) {}); ok {
		t.Fatal("update of unknown id")
	}
	if _, ok := r.Delete("p_a"); !ok || r.Len() != 0 {
		t.Fatal("delete failed")
	}
}

// BenchmarkLoad50k measures building the registry of IoTDA's per-gateway
// maximum.
func BenchmarkLoad50k(b *testing.B) {
	devs := make([]Device, 50000)
	for i := range devs {
		devs[i] = dev(fmt.Sprintf("node%06d", i), Offline)
	}
	b.ReportAllocs()
	for b.Loop() {
		NewRegistry(1, devs)
	}
}
