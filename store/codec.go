package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/subgate/subgate/subdevice"
)

// Kind says what an outbox item is, and so how the northbound packs it
// (iotda-protocol §2.0). The numeric values are stored on disk: never
// renumber them.
type Kind uint8

// Outbox item kinds. Zero is invalid so that a forgotten field is caught.
const (
	// KindMessage is a device message (iotda-protocol §2.1).
	KindMessage Kind = 1
	// KindProperties is a property report, packed into the gateway batch
	// report (iotda-protocol §2.3).
	KindProperties Kind = 2
	// KindEvent is a sub-device event (iotda-protocol §2.8).
	KindEvent Kind = 3
	// KindCustom is a message on a custom or policy topic, carried in
	// Item.Topic (iotda-protocol §2.1).
	KindCustom Kind = 4
)

// String returns the kind's lower-case name.
func (k Kind) String() string {
	switch k {
	case KindMessage:
		return "message"
	case KindProperties:
		return "properties"
	case KindEvent:
		return "event"
	case KindCustom:
		return "custom"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Valid reports whether k is one of the kinds above.
func (k Kind) Valid() bool { return k >= KindMessage && k <= KindCustom }

// Item is one uplink entry of the outbox.
type Item struct {
	// Seq is assigned by the store on Append; it is ignored on input.
	// Sequences start at 1 and grow strictly; they are never reused.
	Seq uint64
	// Kind says how the northbound packs the payload.
	Kind Kind
	// DeviceID is the platform id of the sub-device the data belongs to.
	DeviceID string
	// Topic is the custom or policy topic; set for KindCustom only.
	Topic string
	// Payload is the per-device JSON fragment the northbound will pack.
	Payload []byte
	// Enqueued is when the gateway accepted the item; zero means now.
	Enqueued time.Time
}

// Record format versions: the first byte of every stored record.
const (
	itemFormatV1   = 1
	deviceFormatV1 = 1
)

// itemHeaderMin is the fixed part of an encoded item: format, kind and the
// enqueued time.
const itemHeaderMin = 1 + 1 + 8

// Enqueued times are stored as Unix nanoseconds, so they must lie in the
// range an int64 of nanoseconds covers.
var (
	minEnqueued = time.Unix(0, 0)
	maxEnqueued = time.Unix(0, 1<<63-1)
)

// checkItem validates it for Append against the limits in o.
func checkItem(it *Item, maxPayload int) error {
	if !it.Kind.Valid() {
		return fmt.Errorf("%w: item kind %d", ErrInvalid, uint8(it.Kind))
	}
	if err := subdevice.ValidateDeviceID(it.DeviceID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	switch {
	case it.Kind == KindCustom && it.Topic == "":
		return fmt.Errorf("%w: custom item without topic", ErrInvalid)
	case it.Kind != KindCustom && it.Topic != "":
		return fmt.Errorf("%w: topic set on a %s item", ErrInvalid, it.Kind)
	case len(it.Topic) > MaxTopicLen:
		return fmt.Errorf("%w: topic is %d bytes, limit %d", ErrInvalid, len(it.Topic), MaxTopicLen)
	}
	if len(it.Payload) == 0 {
		return fmt.Errorf("%w: empty payload", ErrInvalid)
	}
	if len(it.Payload) > maxPayload {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(it.Payload), maxPayload)
	}
	if it.Enqueued.Before(minEnqueued) || it.Enqueued.After(maxEnqueued) {
		return fmt.Errorf("%w: enqueued time %s out of range", ErrInvalid, it.Enqueued)
	}
	return nil
}

// appendItem encodes it (without its Seq, which is the key) onto dst:
//
//	format(1)=1 kind(1) enqueued_unix_ns(8, big-endian)
//	uvarint(len(device_id)) device_id uvarint(len(topic)) topic payload...
//
// The payload runs to the end of the record.
func appendItem(dst []byte, it *Item) []byte {
	dst = append(dst, itemFormatV1, byte(it.Kind))
	dst = binary.BigEndian.AppendUint64(dst, uint64(it.Enqueued.UnixNano()))
	dst = binary.AppendUvarint(dst, uint64(len(it.DeviceID)))
	dst = append(dst, it.DeviceID...)
	dst = binary.AppendUvarint(dst, uint64(len(it.Topic)))
	dst = append(dst, it.Topic...)
	return append(dst, it.Payload...)
}

// encodedItemLen is the exact length appendItem adds for it.
func encodedItemLen(it *Item) int {
	return itemHeaderMin + uvarintLen(uint64(len(it.DeviceID))) + len(it.DeviceID) +
		uvarintLen(uint64(len(it.Topic))) + len(it.Topic) + len(it.Payload)
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// itemHeader is the decoded fixed part of a record plus the offsets of its
// variable fields.
type itemHeader struct {
	kind     Kind
	enqueued int64
	devOff   int
	devLen   int
	topicOff int
	topicLen int
	payOff   int
}

// parseItemHeader checks a stored record's framing without copying anything.
func parseItemHeader(b []byte) (itemHeader, error) {
	var h itemHeader
	if len(b) < itemHeaderMin {
		return h, fmt.Errorf("%w: item record is %d bytes", ErrCorrupt, len(b))
	}
	if b[0] != itemFormatV1 {
		return h, fmt.Errorf("%w: item record format %d", ErrCorrupt, b[0])
	}
	h.kind = Kind(b[1])
	if !h.kind.Valid() {
		return h, fmt.Errorf("%w: item kind %d", ErrCorrupt, b[1])
	}
	h.enqueued = int64(binary.BigEndian.Uint64(b[2:10]))
	off := itemHeaderMin
	var err error
	if h.devOff, h.devLen, err = lenPrefixed(b, off); err != nil {
		return h, fmt.Errorf("%w: item device id: %w", ErrCorrupt, err)
	}
	if h.devLen == 0 {
		return h, fmt.Errorf("%w: item without device id", ErrCorrupt)
	}
	if h.topicOff, h.topicLen, err = lenPrefixed(b, h.devOff+h.devLen); err != nil {
		return h, fmt.Errorf("%w: item topic: %w", ErrCorrupt, err)
	}
	h.payOff = h.topicOff + h.topicLen
	return h, nil
}

// lenPrefixed reads a uvarint length at off and checks that many bytes
// follow; it returns the offset and length of the field.
func lenPrefixed(b []byte, off int) (int, int, error) {
	n, k := binary.Uvarint(b[off:])
	if k <= 0 {
		return 0, 0, fmt.Errorf("bad length prefix at %d", off)
	}
	off += k
	if n > uint64(len(b)-off) {
		return 0, 0, fmt.Errorf("length %d overruns record of %d bytes", n, len(b))
	}
	return off, int(n), nil
}

// payloadLen returns the payload size of a stored record.
func payloadLen(b []byte) (int, error) {
	h, err := parseItemHeader(b)
	if err != nil {
		return 0, err
	}
	return len(b) - h.payOff, nil
}

// decodeItem decodes a stored record into a fresh Item that shares no memory
// with b (bbolt's slices die with the transaction).
func decodeItem(seq uint64, b []byte) (Item, error) {
	h, err := parseItemHeader(b)
	if err != nil {
		return Item{}, err
	}
	it := Item{
		Seq:      seq,
		Kind:     h.kind,
		DeviceID: string(b[h.devOff : h.devOff+h.devLen]),
		Payload:  append([]byte(nil), b[h.payOff:]...),
		Enqueued: time.Unix(0, h.enqueued),
	}
	if h.topicLen > 0 {
		it.Topic = string(b[h.topicOff : h.topicOff+h.topicLen])
	}
	return it, nil
}

// seqKey is the outbox key of seq: 8 bytes big-endian, so keys sort in
// sequence order (go-style §9).
func seqKey(dst []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(dst, seq)
}

func keySeq(k []byte) (uint64, bool) {
	if len(k) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(k), true
}

// Device record formats. Format 1 is JSON; format 2 (written since) is
// binary, about a third of the size, so that the device bucket takes fewer
// pages of the mapped file. Both are read.
//
// Format 2:
//
//	format(1)=2 flags(1)
//	uvarint(len) bytes, for: node_id device_id product_id name description
//	                         status fw_version sw_version remote
//	connected_at_unix_ns(8, big-endian)  when flags&devConnected
//	last_seen_unix_ns(8, big-endian)     when flags&devSeen
//
// A name equal to the node id is stored empty with devNameIsNode set.
const (
	deviceFormatV2 = 2

	devNameIsNode = 1 << 0
	devConnected  = 1 << 1
	devSeen       = 1 << 2
	devFlagsAll   = devNameIsNode | devConnected | devSeen
)

// encodeDevice returns the stored form of d. Times that Unix nanoseconds
// cannot hold (outside the years 1678-2262) are kept in format 1.
func encodeDevice(d *subdevice.Device) ([]byte, error) {
	if !nanosFit(d.ConnectedAt) || !nanosFit(d.LastSeen) {
		return encodeDeviceV1(d)
	}
	var flags byte
	name := d.Name
	if name != "" && name == d.NodeID {
		flags |= devNameIsNode
		name = ""
	}
	if !d.ConnectedAt.IsZero() {
		flags |= devConnected
	}
	if !d.LastSeen.IsZero() {
		flags |= devSeen
	}
	fields := [...]string{d.NodeID, d.DeviceID, d.ProductID, name, d.Description,
		string(d.Status), d.FwVersion, d.SwVersion, d.Remote}
	n := 2 + 16
	for _, f := range fields {
		n += uvarintLen(uint64(len(f))) + len(f)
	}
	out := make([]byte, 0, n)
	out = append(out, deviceFormatV2, flags)
	for _, f := range fields {
		out = binary.AppendUvarint(out, uint64(len(f)))
		out = append(out, f...)
	}
	if flags&devConnected != 0 {
		out = binary.BigEndian.AppendUint64(out, uint64(d.ConnectedAt.UnixNano()))
	}
	if flags&devSeen != 0 {
		out = binary.BigEndian.AppendUint64(out, uint64(d.LastSeen.UnixNano()))
	}
	return out, nil
}

// nanosFit reports whether t is zero or Unix nanoseconds represent it.
func nanosFit(t time.Time) bool {
	return t.IsZero() || (!t.Before(minNanos) && !t.After(maxEnqueued))
}

// minNanos is the earliest time Unix nanoseconds hold.
var minNanos = time.Unix(0, math.MinInt64)

// encodeDeviceV1 returns format 1: a format byte and JSON.
func encodeDeviceV1(d *subdevice.Device) ([]byte, error) {
	js, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("store: encode device %q: %w", d.DeviceID, err)
	}
	out := make([]byte, 0, 1+len(js))
	out = append(out, deviceFormatV1)
	return append(out, js...), nil
}

// decodeDevice decodes a stored device record of either format. key is its
// bucket key, which must match the record's device id.
func decodeDevice(key, b []byte) (subdevice.Device, error) {
	var d subdevice.Device
	if len(b) == 0 {
		return d, fmt.Errorf("%w: empty device record %q", ErrCorrupt, key)
	}
	switch b[0] {
	case deviceFormatV1:
		if err := json.Unmarshal(b[1:], &d); err != nil {
			return subdevice.Device{}, fmt.Errorf("%w: device record %q: %w", ErrCorrupt, key, err)
		}
	case deviceFormatV2:
		var err error
		if d, err = decodeDeviceV2(b); err != nil {
			return subdevice.Device{}, fmt.Errorf("%w: device record %q: %w", ErrCorrupt, key, err)
		}
	default:
		return d, fmt.Errorf("%w: device record %q has format %d", ErrCorrupt, key, b[0])
	}
	if d.DeviceID != string(key) {
		return subdevice.Device{}, fmt.Errorf("%w: device record %q holds device id %q", ErrCorrupt, key, d.DeviceID)
	}
	return d, nil
}

// decodeDeviceV2 decodes a format 2 record into strings that share no
// memory with b.
func decodeDeviceV2(b []byte) (subdevice.Device, error) {
	var d subdevice.Device
	if len(b) < 2 {
		return d, fmt.Errorf("record is %d bytes", len(b))
	}
	flags := b[1]
	if flags&^devFlagsAll != 0 {
		return d, fmt.Errorf("unknown flags %#x", flags)
	}
	var status string
	fields := [...]*string{&d.NodeID, &d.DeviceID, &d.ProductID, &d.Name, &d.Description,
		&status, &d.FwVersion, &d.SwVersion, &d.Remote}
	off := 2
	for i, f := range fields {
		at, n, err := lenPrefixed(b, off)
		if err != nil {
			return subdevice.Device{}, fmt.Errorf("field %d: %w", i, err)
		}
		if n > 0 {
			*f = string(b[at : at+n])
		}
		off = at + n
	}
	d.Status = subdevice.Status(status)
	if flags&devNameIsNode != 0 {
		if d.Name != "" {
			return subdevice.Device{}, fmt.Errorf("name %q stored with the node-id flag", d.Name)
		}
		d.Name = d.NodeID
	}
	for _, tf := range [...]struct {
		flag byte
		t    *time.Time
	}{{devConnected, &d.ConnectedAt}, {devSeen, &d.LastSeen}} {
		if flags&tf.flag == 0 {
			continue
		}
		if len(b)-off < 8 {
			return subdevice.Device{}, fmt.Errorf("time truncated at %d", off)
		}
		*tf.t = time.Unix(0, int64(binary.BigEndian.Uint64(b[off:])))
		off += 8
	}
	if off != len(b) {
		return subdevice.Device{}, fmt.Errorf("%d trailing bytes", len(b)-off)
	}
	return d, nil
}

// checkDevice validates d for PutDevices.
func checkDevice(d *subdevice.Device) error {
	if err := subdevice.ValidateDeviceID(d.DeviceID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := subdevice.ValidateNodeID(d.NodeID); err != nil {
		return fmt.Errorf("%w: device %q: %w", ErrInvalid, d.DeviceID, err)
	}
	if d.Status != "" && !d.Status.Valid() {
		return fmt.Errorf("%w: device %q: status %q", ErrInvalid, d.DeviceID, d.Status)
	}
	return nil
}
