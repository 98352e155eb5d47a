package subdevice

import (
	"hash/maphash"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Registry holds every known sub-device in memory, indexed by node id and by
// device id, together with the platform's sub-device list version
// (iotda-protocol §3.10). It is the read path for the gateway; the store is the
// durable copy and is written by the caller.
//
// A gateway holds one record per registered device, so records are kept in a
// compact form (about 80 bytes, see record) and expanded into a Device on
// every read; the two indexes are open-addressing tables of pointers
// (about 8-16 bytes per device each) rather than Go maps.
type Registry struct {
	// mu guards the following fields.
	mu      sync.RWMutex
	byNode  index
	byID    index
	version int64
	strs    internTable
}

// NewRegistry returns a registry loaded with devs at list version version.
func NewRegistry(version int64, devs []Device) *Registry {
	seed := maphash.MakeSeed()
	r := &Registry{
		byNode:  newIndex(keyNode, seed, len(devs)),
		byID:    newIndex(keyID, seed, len(devs)),
		version: version,
		strs:    internTable{ids: make(map[string]uint16)},
	}
	for i := range devs {
		r.putLocked(devs[i])
	}
	return r
}

func (r *Registry) putLocked(d Device) {
	old := r.byID.get(d.DeviceID)
	if old != nil {
		if old.nodeID != d.NodeID {
			r.byNode.del(old.nodeID)
			old = nil
		} else {
			// Keep the strings already held; the new copies (from a
			// decoded notification) can be collected.
			d.DeviceID, d.NodeID = old.deviceID, old.nodeID
		}
	}
	if o := r.byNode.get(d.NodeID); o != nil && o.deviceID != d.DeviceID {
		r.byID.del(o.deviceID)
	}
	if old != nil {
		// Same node id and device id: both indexes already point at it.
		if d.Remote == old.remote {
			d.Remote = old.remote
		}
		*old = r.pack(d)
		return
	}
	p := new(record)
	*p = r.pack(d)
	r.byNode.put(p)
	r.byID.put(p)
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
	if p := r.byNode.get(node); p != nil {
		return r.unpack(p), true
	}
	return Device{}, false
}

// ByID returns a copy of the record with device id id.
func (r *Registry) ByID(id string) (Device, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if p := r.byID.get(id); p != nil {
		return r.unpack(p), true
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
// Times are kept to the nanosecond without their monotonic reading.
func (r *Registry) Update(id string, fn func(*Device)) (Device, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.byID.get(id)
	if p == nil {
		return Device{}, false
	}
	d := r.unpack(p)
	fn(&d)
	if d.DeviceID != p.deviceID || d.NodeID != p.nodeID {
		// fn changed an identifier: index the record again.
		r.byID.del(p.deviceID)
		r.byNode.del(p.nodeID)
		r.putLocked(d)
		return r.unpack(r.byID.get(d.DeviceID)), true
	}
	d.DeviceID, d.NodeID = p.deviceID, p.nodeID
	*p = r.pack(d)
	return r.unpack(p), true
}

// Delete removes the record with device id id and returns it.
func (r *Registry) Delete(id string) (Device, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.byID.del(id)
	if p == nil {
		return Device{}, false
	}
	r.byNode.del(p.nodeID)
	return r.unpack(p), true
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
		if old := r.byID.get(d.DeviceID); old != nil {
			// Keep what the gateway knows locally about the connection.
			d.Remote = old.remote
			d.ConnectedAt, d.LastSeen = fromNanos(old.connected), fromNanos(old.seen)
			if d.Status == "" {
				d.Status = r.unpack(old).Status
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
		if p := r.byID.del(id); p != nil {
			r.byNode.del(p.nodeID)
			removed = append(removed, r.unpack(p))
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
	return r.byID.n
}

// CountByStatus returns how many records are in each status.
func (r *Registry) CountByStatus() map[Status]int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := map[Status]int{Online: 0, Offline: 0, Inactive: 0}
	for _, p := range r.byID.slots {
		if p != nil {
			out[r.status(p)]++
		}
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
	all := make([]Device, 0, r.byID.n)
	for _, p := range r.byID.slots {
		if p == nil {
			continue
		}
		if f.Status != "" && r.status(p) != f.Status {
			continue
		}
		if f.Prefix != "" && !strings.HasPrefix(p.nodeID, f.Prefix) && !strings.HasPrefix(p.deviceID, f.Prefix) {
			continue
		}
		all = append(all, r.unpack(p))
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
	out := make([]Device, 0, r.byID.n)
	for _, p := range r.byID.slots {
		if p != nil {
			out = append(out, r.unpack(p))
		}
	}
	return out
}

// record is the compact form of a Device: 80 bytes on 64-bit platforms
// (TestRecordSize) where a Device takes 192. The strings the platform
// shares between many devices (product id, description, versions) are
// numbers in the registry's intern table, the status is a code, a name
// equal to the node id is a flag, times are Unix nanoseconds, and whatever
// does not fit that (rare) is in more.
type record struct {
	nodeID    string
	deviceID  string
	remote    string
	connected int64 // unix nanoseconds; noTime when zero
	seen      int64 // unix nanoseconds; noTime when zero
	packed    uint64
	more      *recordMore
}

// recordMore holds the fields of a record that its packed form cannot:
// a name other than the node id, a status outside the platform's, and
// strings the intern table could not take.
type recordMore struct {
	name   string
	status Status
	strs   [numInterned]string
}

// Interned fields of a record, each a 14-bit number in record.packed.
const (
	fProduct = iota
	fDescription
	fFw
	fSw
	numInterned
)

// Layout of record.packed: four 14-bit intern numbers, then the status
// code (3 bits) and the name flag.
const (
	internBits  = 14
	internMask  = 1<<internBits - 1
	statusShift = numInterned * internBits
	statusMask  = 7
	nameIsNode  = 1 << (statusShift + 3)

	// inMore marks an interned field whose value is in record.more.
	inMore = internMask
	// maxInterned is how many distinct strings the intern table holds
	// (numbers 1 to maxInterned; 0 is the empty string).
	maxInterned = inMore - 1
	// maxInternLen is the longest string the intern table takes.
	maxInternLen = 256
)

// Status codes in record.packed.
const (
	stEmpty = iota
	stOnline
	stOffline
	stInactive
	stOther // the status is in record.more
)

// noTime stands for the zero time.Time.
const noTime = math.MinInt64

func toNanos(t time.Time) int64 {
	switch {
	case t.IsZero():
		return noTime
	case t.Before(minNanos):
		return noTime + 1
	case t.After(maxNanos):
		return math.MaxInt64
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == noTime {
		return time.Time{}
	}
	return time.Unix(0, n)
}

var (
	minNanos = time.Unix(0, noTime+1)
	maxNanos = time.Unix(0, math.MaxInt64)
)

// pack returns the compact form of d. Times outside the years 1678-2262
// are clamped to that range.
func (r *Registry) pack(d Device) record {
	p := record{
		nodeID:    d.NodeID,
		deviceID:  d.DeviceID,
		remote:    d.Remote,
		connected: toNanos(d.ConnectedAt),
		seen:      toNanos(d.LastSeen),
	}
	var more recordMore
	needMore := false
	for f, s := range [numInterned]string{d.ProductID, d.Description, d.FwVersion, d.SwVersion} {
		id := r.strs.intern(s)
		if id == inMore {
			more.strs[f] = s
			needMore = true
		}
		p.packed |= uint64(id) << (f * internBits)
	}
	var st uint64
	switch d.Status {
	case "":
		st = stEmpty
	case Online:
		st = stOnline
	case Offline:
		st = stOffline
	case Inactive:
		st = stInactive
	default:
		st, more.status, needMore = stOther, d.Status, true
	}
	p.packed |= st << statusShift
	switch d.Name {
	case "":
	case d.NodeID:
		p.packed |= nameIsNode
	default:
		more.name, needMore = d.Name, true
	}
	if needMore {
		m := more
		p.more = &m
	}
	return p
}

// status returns the status of p without expanding the record.
func (r *Registry) status(p *record) Status {
	switch p.packed >> statusShift & statusMask {
	case stOnline:
		return Online
	case stOffline:
		return Offline
	case stInactive:
		return Inactive
	case stOther:
		return p.more.status
	}
	return ""
}

// unpack expands p into a Device. It allocates nothing.
func (r *Registry) unpack(p *record) Device {
	d := Device{
		NodeID:      p.nodeID,
		DeviceID:    p.deviceID,
		Status:      r.status(p),
		Remote:      p.remote,
		ConnectedAt: fromNanos(p.connected),
		LastSeen:    fromNanos(p.seen),
	}
	var strs [numInterned]string
	for f := range strs {
		id := uint16(p.packed >> (f * internBits) & internMask)
		if id == inMore {
			strs[f] = p.more.strs[f]
		} else {
			strs[f] = r.strs.str(id)
		}
	}
	d.ProductID, d.Description, d.FwVersion, d.SwVersion = strs[fProduct], strs[fDescription], strs[fFw], strs[fSw]
	switch {
	case p.packed&nameIsNode != 0:
		d.Name = p.nodeID
	case p.more != nil:
		d.Name = p.more.name
	}
	return d
}

// internTable numbers the strings that many records share: product ids,
// descriptions, firmware and software versions. It holds at most
// maxInterned strings of at most maxInternLen bytes and never forgets one
// (a value that stops being used keeps its number); strings it cannot take
// are kept in the record itself.
type internTable struct {
	ids  map[string]uint16
	strs []string // strs[id-1]
}

// intern returns the number of s: 0 for "", inMore when the table cannot
// take it.
func (t *internTable) intern(s string) uint16 {
	if s == "" {
		return 0
	}
	if id, ok := t.ids[s]; ok {
		return id
	}
	if len(t.strs) >= maxInterned || len(s) > maxInternLen {
		return inMore
	}
	t.strs = append(t.strs, s)
	id := uint16(len(t.strs))
	t.ids[s] = id
	return id
}

func (t *internTable) str(id uint16) string {
	if id == 0 {
		return ""
	}
	return t.strs[id-1]
}

// Index keys.
const (
	keyNode = iota
	keyID
)

// index is an open-addressing hash table (linear probing, deletion by
// backward shift, so no tombstones) of records keyed by node id or device
// id. It is kept at most 3/4 full and halved when under 1/8 full, so it
// costs 8 bytes per slot, about 11-21 bytes per record.
type index struct {
	slots []*record // length a power of two, at least minSlots
	n     int
	key   int // keyNode or keyID
	seed  maphash.Seed
}

const minSlots = 16

func newIndex(key int, seed maphash.Seed, hint int) index {
	size := minSlots
	for size*3/4 < hint {
		size *= 2
	}
	return index{slots: make([]*record, size), key: key, seed: seed}
}

func (x *index) keyOf(p *record) string {
	if x.key == keyNode {
		return p.nodeID
	}
	return p.deviceID
}

func (x *index) home(k string) int {
	return int(maphash.String(x.seed, k) & uint64(len(x.slots)-1))
}

// find returns the slot holding key k, or the empty slot where it would go.
func (x *index) find(k string) int {
	mask := len(x.slots) - 1
	i := x.home(k)
	for x.slots[i] != nil && x.keyOf(x.slots[i]) != k {
		i = (i + 1) & mask
	}
	return i
}

func (x *index) get(k string) *record {
	return x.slots[x.find(k)]
}

// put inserts p, replacing the record with the same key.
func (x *index) put(p *record) {
	i := x.find(x.keyOf(p))
	if x.slots[i] != nil {
		x.slots[i] = p
		return
	}
	if (x.n+1)*4 > len(x.slots)*3 {
		x.resize(len(x.slots) * 2)
		i = x.find(x.keyOf(p))
	}
	x.slots[i] = p
	x.n++
}

// del removes and returns the record with key k (nil when none).
func (x *index) del(k string) *record {
	i := x.find(k)
	p := x.slots[i]
	if p == nil {
		return nil
	}
	mask := len(x.slots) - 1
	x.slots[i] = nil
	// Move back every following record of the run whose home slot does
	// not lie cyclically in (i, j]: it would no longer be found.
	for j := (i + 1) & mask; x.slots[j] != nil; j = (j + 1) & mask {
		h := x.home(x.keyOf(x.slots[j]))
		if (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			x.slots[i], x.slots[j] = x.slots[j], nil
			i = j
		}
	}
	x.n--
	if len(x.slots) > minSlots && x.n*8 < len(x.slots) {
		x.resize(len(x.slots) / 2)
	}
	return p
}

func (x *index) resize(size int) {
	old := x.slots
	x.slots = make([]*record, size)
	mask := size - 1
	for _, p := range old {
		if p == nil {
			continue
		}
		i := x.home(x.keyOf(p))
		for x.slots[i] != nil {
			i = (i + 1) & mask
		}
		x.slots[i] = p
	}
}
