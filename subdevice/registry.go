package subdevice

import (
	"slices"
	"strings"
	"sync"
)

// Registry holds every known sub-device in memory, indexed by node id and by
// device id, together with the platform's sub-device list version
// (iotda-protocol §3.10). It is the read path for the gateway; the store is the
// durable copy and is written by the caller.
type Registry struct {
	// mu guards the following fields.
	mu      sync.RWMutex
	byNode  map[string]*Device
	byID    map[string]*Device
	version int64
	// products interns product ids: a few distinct values shared by
	// tens of thousands of records.
	products map[string]string
}

// NewRegistry returns a registry loaded with devs at list version version.
func NewRegistry(version int64, devs []Device) *Registry {
	r := &Registry{
		byNode:   make(map[string]*Device, len(devs)),
		byID:     make(map[string]*Device, len(devs)),
		version:  version,
		products: make(map[string]string),
	}
	for i := range devs {
		r.putLocked(devs[i])
	}
	return r
}

func (r *Registry) putLocked(d Device) {
	if old, ok := r.byID[d.DeviceID]; ok {
		if old.NodeID != d.NodeID {
			delete(r.byNode, old.NodeID)
		} else {
			// Keep the strings already held; the new copies (from a
			// decoded notification) can be collected.
			d.DeviceID, d.NodeID = old.DeviceID, old.NodeID
		}
	}
	if old, ok := r.byNode[d.NodeID]; ok && old.DeviceID != d.DeviceID {
		delete(r.byID, old.DeviceID)
	}
	if d.ProductID != "" {
		if s, ok := r.products[d.ProductID]; ok {
			d.ProductID = s
		} else if len(r.products) < 1024 {
			r.products[d.ProductID] = d.ProductID
		}
	}
	p := new(Device)
	*p = d
	r.byNode[d.NodeID] = p
	r.byID[d.DeviceID] = p
}

// Version returns the sub-device list version last applied.
func (r *Registry) Version() int64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.version
}

// ByNode returns a copy of the record with node id node.
func (r *Registry) ByNode(node string) (Device, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if d, ok := r.byNode[node]; ok {
		return *d, true
	}
	return Device{}, false
}

// ByID returns a copy of the record with device id id.
func (r *Registry) ByID(id string) (Device, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if d, ok := r.byID[id]; ok {
		return *d, true
	}
	return Device{}, false
}

// Put inserts or replaces a record.
func (r *Registry) Put(d Device) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.putLocked(d)
}

// Update applies fn to the record with device id id and returns the result.
// fn runs under the registry lock: it must not block or call the registry.
func (r *Registry) Update(id string, fn func(*Device)) (Device, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.byID[id]
	if !ok {
		return Device{}, false
	}
	fn(d)
	return *d, true
}

// Delete removes the record with device id id and returns it.
func (r *Registry) Delete(id string) (Device, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.byID[id]
	if !ok {
		return Device{}, false
	}
	delete(r.byID, id)
	delete(r.byNode, d.NodeID)
	return *d, true
}

// Accept reports whether a notification carrying version v is to be applied
// under the version rule of iotda-protocol §3.10: it is rejected when
// 0 < v <= the local version.
func (r *Registry) Accept(v int64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return !(v > 0 && v <= r.version)
}

// ApplyAdd applies an add notification: under the version rule, every device
// in devs is inserted (or refreshed) and the version moves to v. It reports
// whether the notification was applied.
func (r *Registry) ApplyAdd(v int64, devs []Device) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v > 0 && v <= r.version {
		return false
	}
	for _, d := range devs {
		if old, ok := r.byID[d.DeviceID]; ok {
			// Keep what the gateway knows locally about the connection.
			d.Remote, d.ConnectedAt, d.LastSeen = old.Remote, old.ConnectedAt, old.LastSeen
			if d.Status == "" {
				d.Status = old.Status
			}
		}
		r.putLocked(d)
	}
	if v > r.version {
		r.version = v
	}
	return true
}

// ApplyDelete applies a delete notification under the version rule and
// returns the records removed. ok is false when the notification was stale.
func (r *Registry) ApplyDelete(v int64, ids []string) (removed []Device, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v > 0 && v <= r.version {
		return nil, false
	}
	for _, id := range ids {
		if d, found := r.byID[id]; found {
			removed = append(removed, *d)
			delete(r.byID, id)
			delete(r.byNode, d.NodeID)
		}
	}
	if v > r.version {
		r.version = v
	}
	return removed, true
}

// Len returns the number of records.
func (r *Registry) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byID)
}

// CountByStatus returns how many records are in each status.
func (r *Registry) CountByStatus() map[Status]int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := map[Status]int{Online: 0, Offline: 0, Inactive: 0}
	for _, d := range r.byID {
		out[d.Status]++
	}
	return out
}

// Filter selects records in List.
type Filter struct {
	// Status, when set, keeps only records in that status.
	Status Status
	// Prefix, when set, keeps only records whose node id or device id starts with it.
	Prefix string
}

// List returns the records that match f, sorted by device id, skipping the
// first offset and returning at most limit (all when limit <= 0), plus the
// total number of matches.
func (r *Registry) List(f Filter, offset, limit int) ([]Device, int) {
	r.mu.RLock()
	all := make([]Device, 0, len(r.byID))
	for _, d := range r.byID {
		if f.Status != "" && d.Status != f.Status {
			continue
		}
		if f.Prefix != "" && !strings.HasPrefix(d.NodeID, f.Prefix) && !strings.HasPrefix(d.DeviceID, f.Prefix) {
			continue
		}
		all = append(all, *d)
	}
	r.mu.RUnlock()
	slices.SortFunc(all, func(a, b Device) int { return strings.Compare(a.DeviceID, b.DeviceID) })
	total := len(all)
	if offset >= total {
		return nil, total
	}
	all = all[offset:]
	if limit > 0 && len(all) > limit {
		all = all[:limit]
	}
	return all, total
}

// All returns copies of all records in no particular order.
func (r *Registry) All() []Device {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Device, 0, len(r.byID))
	for _, d := range r.byID {
		out = append(out, *d)
	}
	return out
}
