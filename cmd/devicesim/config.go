package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/subdevice"
)

// Bounds of the flags: each keeps a typo from turning into a run the host
// cannot carry.
const (
	maxDevices     = 1_000_000
	maxSources     = 1 << 16
	maxMsgRate     = 1000 // reports per second per device
	maxPayload     = 60 << 10
	maxWindow      = 1024
	maxPending     = 100_000
	maxRecvQueue   = 1024
	maxSecretFile  = 8 << 10
	maxConnectRate = 1_000_000
	// fdReserve is the descriptors kept for the process itself (stdio,
	// the netpoller, signals) when -n is capped by RLIMIT_NOFILE.
	fdReserve = 64
)

// errUsage is wrapped by every configuration error (exit code 2).
var errUsage = errors.New("devicesim: bad flags")

func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// config is what the flags say, validated.
type config struct {
	Addr    string
	Codec   string
	N       int    // devices in this process
	Prefix  string // node id = Prefix + strconv.Itoa(Offset+i)
	Offset  int
	Product string // hello product id ("" = none)
	// Secret is the token secret of every device, or the master key when
	// Derive is set; nil means no token auth.
	Secret []byte
	Derive bool
	// Sources are the source IPs, used round robin by device index; empty
	// lets the kernel choose.
	Sources        []string
	ConnectRate    float64 // connection attempts per second (0 = unlimited)
	ConnectBurst   int     // token bucket depth of ConnectRate
	MaxPending     int     // handshakes in flight at once
	ConnectTimeout time.Duration
	MsgRate        float64 // property reports per second per device (0 = none)
	Payload        int     // bytes of the reported property value
	Ack            bool    // ask for acks (seq) and measure their latency
	Counter        bool    // number each device's reports in property "n" (counter.go)
	Window         int     // reports waiting for an ack, per device
	Answer         bool    // answer commands and property set/get
	Hold           time.Duration
	Drain          time.Duration // after Hold, wait at most this long for outstanding acks
	Duration       time.Duration
	Report         time.Duration // progress line interval (0 = none)
	RecvQueue      int           // frames buffered per device before reading stops
	Flood          floodConfig   // -flood attackers (flood.go); off when it has no kinds
}

// validate checks c and reports the first problem.
func (c *config) validate() error {
	switch {
	case c.Addr == "":
		return usagef("-addr is empty")
	case c.N < 0 || c.N > maxDevices || c.N == 0 && !c.Flood.enabled():
		return usagef("-n must be in [1, %d] (0 with -flood), got %d", maxDevices, c.N)
	case c.Offset < 0 || c.Offset > maxDevices*1000:
		return usagef("-offset must be in [0, %d], got %d", maxDevices*1000, c.Offset)
	case c.ConnectRate < 0 || c.ConnectRate > maxConnectRate || math.IsNaN(c.ConnectRate):
		return usagef("-connect-rate must be in [0, %d], got %v", maxConnectRate, c.ConnectRate)
	case c.ConnectBurst < 1 || c.ConnectBurst > maxPending:
		return usagef("-connect-burst must be in [1, %d], got %d", maxPending, c.ConnectBurst)
	case c.MaxPending < 1 || c.MaxPending > maxPending:
		return usagef("-max-pending must be in [1, %d], got %d", maxPending, c.MaxPending)
	case c.ConnectTimeout <= 0:
		return usagef("-connect-timeout must be positive")
	case c.MsgRate < 0 || c.MsgRate > maxMsgRate || math.IsNaN(c.MsgRate):
		return usagef("-msg-rate must be in [0, %d], got %v", maxMsgRate, c.MsgRate)
	case c.Payload < 0 || c.Payload > maxPayload:
		return usagef("-payload must be in [0, %d], got %d", maxPayload, c.Payload)
	case c.Window < 1 || c.Window > maxWindow:
		return usagef("-window must be in [1, %d], got %d", maxWindow, c.Window)
	case c.RecvQueue < 1 || c.RecvQueue > maxRecvQueue:
		return usagef("-recv-queue must be in [1, %d], got %d", maxRecvQueue, c.RecvQueue)
	case c.Hold < 0:
		return usagef("-hold must not be negative")
	case c.Drain < 0:
		return usagef("-drain must not be negative")
	case c.Duration <= 0:
		return usagef("-duration must be positive")
	case c.Report < 0:
		return usagef("-report must not be negative")
	case c.Derive && c.Secret == nil:
		return usagef("-secret-derive needs -secret-file or -secret-hex")
	}
	codec, err := frame.ByName(c.Codec)
	if err != nil {
		return usagef("-codec: %v", err)
	}
	if !codec.Native() {
		// The demo protocol has no hello, acks or device answers
		// (iotda-protocol §6.1): a device only sends "<id>|<content>".
		switch {
		case c.Ack:
			return usagef("-ack needs a native codec (jsonl or binary)")
		case c.Answer:
			return usagef("-answer needs a native codec (jsonl or binary)")
		case c.Counter:
			return usagef("-counter needs a native codec (jsonl or binary)")
		case c.Secret != nil:
			return usagef("token auth needs a native codec (jsonl or binary)")
		}
	}
	if err := c.Flood.validate(codec.Native()); err != nil {
		return err
	}
	for _, i := range []int{0, c.N - 1} {
		if err := subdevice.ValidateNodeID(c.nodeID(i)); c.N > 0 && err != nil {
			return usagef("-prefix/-offset: %v", err)
		}
	}
	if c.Product != "" {
		if err := subdevice.ValidateProductID(c.Product); err != nil {
			return usagef("-product: %v", err)
		}
	}
	return nil
}

// nodeID is the node id of device i of this process.
func (c *config) nodeID(i int) string { return c.Prefix + strconv.Itoa(c.Offset+i) }

// source is the source IP of device i ("" = any).
func (c *config) source(i int) string {
	if len(c.Sources) == 0 {
		return ""
	}
	return c.Sources[i%len(c.Sources)]
}

// secretFor returns the token secret of node: the configured secret, or
// with Derive the lowercase hex of HMAC-SHA256(key=master, msg=node id),
// 64 characters that `subgate tokens set NODE -secret-file F` can store.
func (c *config) secretFor(node string) []byte {
	if c.Secret == nil {
		return nil
	}
	if !c.Derive {
		return c.Secret
	}
	return deriveSecret(c.Secret, node)
}

func deriveSecret(master []byte, node string) []byte {
	m := hmac.New(sha256.New, master)
	m.Write([]byte(node))
	var sum [sha256.Size]byte
	return hex.AppendEncode(make([]byte, 0, 2*sha256.Size), m.Sum(sum[:0]))
}

// parseSources parses -src: empty, or a comma-separated list of IP
// addresses and inclusive ranges "first-last" of one family. It returns
// at most maxSources addresses.
func parseSources(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := netip.ParseAddr(strings.TrimSpace(lo))
		if err != nil {
			return nil, usagef("-src: %v", err)
		}
		last := first
		if isRange {
			if last, err = netip.ParseAddr(strings.TrimSpace(hi)); err != nil {
				return nil, usagef("-src: %v", err)
			}
		}
		if first.Zone() != "" || last.Zone() != "" {
			return nil, usagef("-src: zoned address %q", part)
		}
		if first.BitLen() != last.BitLen() || last.Less(first) {
			return nil, usagef("-src: bad range %q", part)
		}
		for a := first; a.IsValid(); a = a.Next() {
			if len(out) == maxSources {
				return nil, usagef("-src: more than %d addresses", maxSources)
			}
			out = append(out, a.String())
			if a == last {
				break
			}
		}
	}
	return out, nil
}

// readSecretFile reads a token secret the way `subgate tokens set
// -secret-file` does: the file's bytes without trailing line ends.
func readSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usagef("-secret-file: %v", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, usagef("-secret-file: %v", err)
	}
	if len(b) > maxSecretFile {
		return nil, usagef("-secret-file: larger than %d bytes", maxSecretFile)
	}
	b = []byte(strings.TrimRight(string(b), "\r\n"))
	if len(b) == 0 {
		return nil, usagef("-secret-file: %s is empty", path)
	}
	return b, nil
}

// parseSecretHex decodes -secret-hex.
func parseSecretHex(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, usagef("-secret-hex: %v", err)
	}
	if len(b) == 0 {
		return nil, usagef("-secret-hex is empty")
	}
	return b, nil
}

// capDevices limits n to what a process allowed limit open descriptors
// can hold: one socket per device plus fdReserve. limit 0 means unknown.
// It reports whether n was lowered.
func capDevices(n int, limit uint64) (int, bool) {
	if limit == 0 {
		return n, false
	}
	room := int64(0)
	if limit > fdReserve {
		room = int64(min(limit-fdReserve, uint64(maxDevices)))
	}
	if int64(n) <= room {
		return n, false
	}
	return int(room), true
}
