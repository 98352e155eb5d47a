package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Link types (tcpdump's LINKTYPE_ values) this reader understands.
const (
	linkNull     = 0   // BSD loopback: 4-byte address family, host order
	linkEthernet = 1   // Linux lo and real interfaces
	linkRaw      = 101 // raw IPv4/IPv6
	linkSLL      = 113 // Linux cooked capture v1 (-i any, older tcpdump)
	linkSLL2     = 276 // Linux cooked capture v2 (-i any)
)

// linkHeaders: the header size of the link types that carry an
// ethertype, and where it is.
var linkHeaders = map[uint32]struct{ size, proto int }{
	linkEthernet: {14, 12},
	linkSLL:      {16, 14},
	linkSLL2:     {20, 0},
}

// maxRecord bounds one captured packet: a record header claiming more is
// a corrupt file, not a reason to allocate gigabytes.
const maxRecord = 1 << 20

type pcapReader struct {
	r     *bufio.Reader
	order binary.ByteOrder
	nanos bool
	link  uint32
	hdr   [16]byte
	buf   []byte
}

func newPcapReader(rd io.Reader) (*pcapReader, error) {
	p := &pcapReader{r: bufio.NewReaderSize(rd, 1<<20)}
	var gh [24]byte
	if _, err := io.ReadFull(p.r, gh[:]); err != nil {
		return nil, fmt.Errorf("pcap header: %w", err)
	}
	switch m := binary.LittleEndian.Uint32(gh[:4]); m {
	case 0xa1b2c3d4:
		p.order = binary.LittleEndian
	case 0xa1b23c4d:
		p.order, p.nanos = binary.LittleEndian, true
	case 0xd4c3b2a1:
		p.order = binary.BigEndian
	case 0x4d3cb2a1:
		p.order, p.nanos = binary.BigEndian, true
	default:
		return nil, fmt.Errorf("not a pcap file (magic %#x; pcapng is not read: capture with tcpdump -w)", m)
	}
	p.link = p.order.Uint32(gh[20:24]) & 0x0fffffff
	switch p.link {
	case linkNull, linkEthernet, linkRaw, linkSLL, linkSLL2:
	default:
		return nil, fmt.Errorf("pcap link type %d not supported", p.link)
	}
	return p, nil
}

// next returns the next record's timestamp and captured bytes (valid until
// the following call).
func (p *pcapReader) next() (time.Time, []byte, error) {
	if _, err := io.ReadFull(p.r, p.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			// tcpdump killed mid-write: the last record is cut.
			return time.Time{}, nil, io.EOF
		}
		return time.Time{}, nil, err
	}
	sec := int64(p.order.Uint32(p.hdr[0:4]))
	frac := int64(p.order.Uint32(p.hdr[4:8]))
	n := p.order.Uint32(p.hdr[8:12])
	if n > maxRecord {
		return time.Time{}, nil, fmt.Errorf("pcap record of %d bytes: corrupt file", n)
	}
	if !p.nanos {
		frac *= 1000
	}
	if cap(p.buf) < int(n) {
		p.buf = make([]byte, n)
	}
	p.buf = p.buf[:n]
	if _, err := io.ReadFull(p.r, p.buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return time.Time{}, nil, io.EOF
		}
		return time.Time{}, nil, err
	}
	return time.Unix(sec, frac), p.buf, nil
}

type flowKey struct {
	src, dst         netip.Addr
	srcPort, dstPort uint16
}

type tcpSegment struct {
	key     flowKey
	client  string // src ip:port
	dstPort uint16
	seq     uint32
	syn     bool
	payload []byte
}

// tcp extracts the TCP segment of one captured packet.
func (p *pcapReader) tcp(b []byte) (tcpSegment, bool) {
	var proto uint16 // ethertype
	switch p.link {
	case linkEthernet, linkSLL, linkSLL2:
		lh := linkHeaders[p.link]
		if len(b) < lh.size {
			return tcpSegment{}, false
		}
		proto, b = binary.BigEndian.Uint16(b[lh.proto:]), b[lh.size:]
		for p.link == linkEthernet && (proto == 0x8100 || proto == 0x88a8) { // VLAN tags
			if len(b) < 4 {
				return tcpSegment{}, false
			}
			proto, b = binary.BigEndian.Uint16(b[2:4]), b[4:]
		}
	case linkNull:
		if len(b) < 4 {
			return tcpSegment{}, false
		}
		switch af := p.order.Uint32(b[:4]); af {
		case 2:
			proto = 0x0800
		case 10, 24, 28, 30:
			proto = 0x86dd
		}
		b = b[4:]
	case linkRaw:
		if len(b) < 1 {
			return tcpSegment{}, false
		}
		switch b[0] >> 4 {
		case 4:
			proto = 0x0800
		case 6:
			proto = 0x86dd
		}
	}
	var seg tcpSegment
	switch proto {
	case 0x0800:
		if len(b) < 20 || b[0]>>4 != 4 {
			return seg, false
		}
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if b[9] != 6 || ihl < 20 || total < ihl || len(b) < ihl {
			return seg, false
		}
		if binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 {
			return seg, false // a fragment: not on loopback
		}
		seg.key.src, _ = netip.AddrFromSlice(b[12:16])
		seg.key.dst, _ = netip.AddrFromSlice(b[16:20])
		if total < len(b) {
			b = b[:total] // Ethernet padding
		}
		b = b[ihl:]
	case 0x86dd:
		if len(b) < 40 || b[6] != 6 {
			return seg, false // extension headers are not followed
		}
		seg.key.src, _ = netip.AddrFromSlice(b[8:24])
		seg.key.dst, _ = netip.AddrFromSlice(b[24:40])
		if pl := int(binary.BigEndian.Uint16(b[4:6])); 40+pl < len(b) {
			b = b[:40+pl]
		}
		b = b[40:]
	default:
		return seg, false
	}
	if len(b) < 20 {
		return seg, false
	}
	off := int(b[12]>>4) * 4
	if off < 20 || off > len(b) {
		return seg, false
	}
	seg.key.srcPort = binary.BigEndian.Uint16(b[0:2])
	seg.key.dstPort = binary.BigEndian.Uint16(b[2:4])
	seg.dstPort = seg.key.dstPort
	seg.seq = binary.BigEndian.Uint32(b[4:8])
	seg.syn = b[13]&0x02 != 0
	seg.payload = b[off:]
	seg.client = netip.AddrPortFrom(seg.key.src, seg.key.srcPort).String()
	return seg, true
}
