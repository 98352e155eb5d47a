// Command wirerate counts MQTT PUBLISH packets in a packet capture and
// checks them against a per-connection rate cap, with the capture's
// kernel timestamps. It is the benchmarks' second instrument for the
// IoTDA quota (50 publishes in any one second per connection, iotda
// reference §7): the simulator stamps a publish when its own goroutine
// gets to it, so a simulator that was descheduled for a few milliseconds
// can count publishes closer together than they travelled. A capture on
// the loopback interface stamps each segment as the gateway's write puts
// it on the interface.
//
// Usage:
//
//	tcpdump -i lo -s 0 -B 65536 --time-stamp-precision=nano -w cap.pcap 'tcp port 48831' &
//	... run the load ...
//	wirerate -port 48831 -cap 50 cap.pcap
//
// It reads classic pcap files (micro- or nanosecond timestamps; Ethernet,
// Linux cooked v1/v2, BSD loopback or raw IP link types), follows every
// TCP stream towards -port from its SYN, and prints one JSON object:
// publishes per stream and in all, the most publishes in any window of
// -window, the tightest span of cap+1 consecutive publishes of a stream,
// and the violations (a publish with cap others of its stream less than
// -window before it, the simulator's rule). A publish counts at the
// capture time of its last byte.
//
// It frames plain MQTT only: the benchmarks' simulator listens without
// TLS. A capture of a TLS connection (IoTDA's port 8883) cannot be
// framed; on a real deployment the gateway's own metrics
// (subgate_northbound_publishes_total, subgate_northbound_quota_wait_seconds)
// tell how the quota is used.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

func main() {
	port := flag.Int("port", 0, "the MQTT server's TCP port: streams towards it are counted (required)")
	limit := flag.Int("cap", 50, "publishes allowed per window and connection")
	window := flag.Duration("window", time.Second, "the cap's window")
	since := flag.String("since", "", "count only publishes at or after this RFC 3339 time")
	until := flag.String("until", "", "count only publishes before this RFC 3339 time")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: wirerate -port P [-cap N] [-window D] [-since T] [-until T] file.pcap\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *port <= 0 || *port > 65535 || flag.NArg() != 1 || *limit < 1 || *window <= 0 {
		flag.Usage()
		os.Exit(2)
	}
	var from, to time.Time
	for _, t := range []struct {
		s   string
		dst *time.Time
	}{{*since, &from}, {*until, &to}} {
		if t.s == "" {
			continue
		}
		v, err := time.Parse(time.RFC3339Nano, t.s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "wirerate: %v\n", err)
			os.Exit(2)
		}
		*t.dst = v
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "wirerate: %v\n", err)
		os.Exit(1)
	}
	defer f.Close()
	streams, err := Count(f, uint16(*port))
	if err != nil {
		fmt.Fprintf(os.Stderr, "wirerate: %v\n", err)
		os.Exit(1)
	}
	r := Analyze(streams, *limit, *window, from, to)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		fmt.Fprintf(os.Stderr, "wirerate: %v\n", err)
		os.Exit(1)
	}
}

// Report is what wirerate prints.
type Report struct {
	Streams       []StreamReport `json:"streams"`
	Publishes     int            `json:"publishes"`
	Violations    int            `json:"violations"`
	MaxInWindow   int            `json:"max_in_window"`
	TightestMs    float64        `json:"tightest_span_ms"`     // of cap+1 publishes of one stream; 0 when none had that many
	TightestAt    time.Time      `json:"tightest_at,omitzero"` // the first publish of that span
	First         time.Time      `json:"first,omitzero"`
	Last          time.Time      `json:"last,omitzero"`
	Unparsed      int            `json:"unparsed_streams"` // streams without a SYN in the capture, or with a gap
	MalformedMQTT int            `json:"malformed_streams"`
}

// StreamReport is one TCP stream's part of a Report.
type StreamReport struct {
	Client      string  `json:"client"`
	Publishes   int     `json:"publishes"`
	Violations  int     `json:"violations"`
	MaxInWindow int     `json:"max_in_window"`
	TightestMs  float64 `json:"tightest_span_ms"`
	Gap         bool    `json:"gap,omitempty"`
	Malformed   bool    `json:"malformed,omitempty"`
}

// Analyze applies the cap to the publish times of each stream, keeping
// those within [from, to) (a zero bound is open).
func Analyze(streams []*Stream, limit int, window time.Duration, from, to time.Time) Report {
	var r Report
	for _, s := range streams {
		if !s.synSeen || s.gap {
			r.Unparsed++
		}
		if s.malformed {
			r.MalformedMQTT++
		}
		var ts []time.Time
		for _, t := range s.Publishes {
			if (!from.IsZero() && t.Before(from)) || (!to.IsZero() && !t.Before(to)) {
				continue
			}
			ts = append(ts, t)
		}
		sr := StreamReport{Client: s.Client, Publishes: len(ts), Gap: s.gap || !s.synSeen, Malformed: s.malformed}
		rate := iotda.MeasureRate(ts, limit, window)
		sr.MaxInWindow, sr.Violations = rate.MaxInWindow, rate.Violations
		if rate.Tightest >= 0 {
			sr.TightestMs = float64(rate.Tightest) / float64(time.Millisecond)
			if r.TightestMs == 0 || sr.TightestMs < r.TightestMs {
				r.TightestMs, r.TightestAt = sr.TightestMs, ts[rate.TightestAt]
			}
		}
		if len(ts) > 0 {
			if r.First.IsZero() || ts[0].Before(r.First) {
				r.First = ts[0]
			}
			if ts[len(ts)-1].After(r.Last) {
				r.Last = ts[len(ts)-1]
			}
		}
		r.Publishes += sr.Publishes
		r.Violations += sr.Violations
		r.MaxInWindow = max(r.MaxInWindow, sr.MaxInWindow)
		r.Streams = append(r.Streams, sr)
	}
	return r
}

// Count reads a pcap capture and returns every TCP stream towards port
// with the capture times of its complete MQTT PUBLISH packets.
func Count(rd io.Reader, port uint16) ([]*Stream, error) {
	pr, err := newPcapReader(rd)
	if err != nil {
		return nil, err
	}
	byKey := map[flowKey]*Stream{}
	var order []*Stream
	for {
		ts, data, err := pr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return order, err
		}
		seg, ok := pr.tcp(data)
		if !ok || seg.dstPort != port {
			continue
		}
		s := byKey[seg.key]
		if s == nil || seg.syn {
			// A SYN starts a stream afresh (a reconnect may reuse the
			// client port).
			s = &Stream{Client: seg.client}
			byKey[seg.key] = s
			order = append(order, s)
		}
		s.segment(ts, seg)
	}
	return order, nil
}
