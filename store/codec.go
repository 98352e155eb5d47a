package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
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

// encodeDevice returns the stored form of d: a format byte and JSON.
func encodeDevice(d *subdevice.Device) ([]byte, error) {
	js, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("store: encode device %q: %w", d.DeviceID, err)
	}
	out := make([]byte, 0, 1+len(js))
	out = append(out, deviceFormatV1)
	return append(out, js...), nil
}

// decodeDevice decodes a stored device record. key is its bucket key, which
// must match the record's device id.
func decodeDevice(key, b []byte) (subdevice.Device, error) {
	var d subdevice.Device
	if len(b) == 0 {
		return d, fmt.Errorf("%w: empty device record %q", ErrCorrupt, key)
	}
	if b[0] != deviceFormatV1 {
		return d, fmt.Errorf("%w: device record %q has format %d", ErrCorrupt, key, b[0])
	}
	if err := json.Unmarshal(b[1:], &d); err != nil {
		return subdevice.Device{}, fmt.Errorf("%w: device record %q: %w", ErrCorrupt, key, err)
	}
	if d.DeviceID != string(key) {
		return subdevice.Device{}, fmt.Errorf("%w: device record %q holds device id %q", ErrCorrupt, key, d.DeviceID)
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
