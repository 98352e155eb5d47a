// Command devicesim is subgate's load generator: it plays N plain-TCP
// sub-devices in one process against a gateway's southbound port, using the
// device client of southbound/southboundtest, and prints what happened as
// one grep-able line (or JSON with -json).
//
//	devicesim -addr 127.0.0.1:8081 -codec binary -n 10000 -hold 60s
//	devicesim -n 5000 -offset 5000 -msg-rate 0.1 -ack     # a second process, disjoint node ids
//	devicesim -n 5000 -msg-rate 0.5 -ack -counter         # reports numbered per device in property "n"
//
// Device i of a process has node id <prefix><offset+i>, so several
// processes with disjoint -offset ranges share one run. Each device
// connects (at most -connect-rate per second, -max-pending handshakes at
// once), says hello (with the token proof when a secret is given), reports
// one property every 1/-msg-rate seconds, answers commands and property
// set/get with -answer, and -hold after every device of the process has
// connected or failed stops reporting, waits at most -drain for the acks
// still due, and closes. -duration bounds the whole run; SIGINT or SIGTERM
// ends it at once, and the summary is still printed.
//
// Token secrets: -secret-file (the file's bytes without trailing line
// ends, as `subgate tokens set -secret-file` stores them) or -secret-hex
// give every device the same secret. With -secret-derive that secret is a
// master key and device NODE uses the 64-character lowercase hex of
// HMAC-SHA256(key=master, msg=NODE) instead; -print-secrets lists
// "NODE SECRET" lines for the range, to provision the gateway.
//
// One source IP has about 28,000 ephemeral ports: -src spreads the
// connections round robin over a list or range of local addresses, such
// as 127.0.0.2-127.0.0.254 on Linux, where all of 127.0.0.0/8 is local.
// Before starting, -n is capped to what RLIMIT_NOFILE (or -max-fds) lets
// the process open, with a warning.
//
// Goroutines: one launcher, one per device (two with -msg-rate, plus the
// client's reader), one progress reporter; the run waits for all of them.
// Per-device memory is kept small: a receive queue of -recv-queue frames,
// the client's 4 KiB read buffer and an ack window of -window slots.
//
// Flood: -flood churn,oversize,garbage,slow,halfopen,badauth (or all)
// adds -flood-n attackers per kind next to the devices (-n 0: attackers
// only), opening at most -flood-rate connections per second for
// -flood-duration; a "devicesim-flood:" line per kind counts the error
// frames the gateway answered and the connections it cut (flood.go).
//
// Exit status: 0, 1 when -strict and some device did not connect (or
// the run could not start), 2 for bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the flags that do not go into config as is.
type options struct {
	secretFile   string
	secretHex    string
	src          string
	maxFDs       uint64
	json         bool
	strict       bool
	printSecrets bool
}

func parseFlags(args []string, stderr io.Writer) (config, options, error) {
	var c config
	var o options
	fs := flag.NewFlagSet("devicesim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:8081", "gateway southbound address")
	fs.StringVar(&c.Codec, "codec", frame.NameJSONL, "wire format: jsonl, binary or demo")
	fs.IntVar(&c.N, "n", 1000, "devices in this process")
	fs.StringVar(&c.Prefix, "prefix", "dev", "node id prefix: device i is <prefix><offset+i>")
	fs.IntVar(&c.Offset, "offset", 0, "first device number (disjoint ranges for several processes)")
	fs.StringVar(&c.Product, "product", "", "product id sent in the hello (empty: none)")
	fs.StringVar(&o.secretFile, "secret-file", "", "file holding the token secret (token auth)")
	fs.StringVar(&o.secretHex, "secret-hex", "", "token secret in hex (visible in ps: prefer -secret-file)")
	fs.BoolVar(&c.Derive, "secret-derive", false, "the secret is a master key: device NODE uses hex(HMAC-SHA256(master, NODE))")
	fs.BoolVar(&o.printSecrets, "print-secrets", false, "print \"NODE SECRET\" for every device of the range and exit")
	fs.StringVar(&o.src, "src", "", "source IPs, round robin: list and/or ranges, e.g. 127.0.0.2-127.0.0.254 (empty: any)")
	fs.Float64Var(&c.ConnectRate, "connect-rate", 500, "connection attempts per second (0: unlimited)")
	fs.IntVar(&c.ConnectBurst, "connect-burst", 10, "connection attempts allowed at once above -connect-rate")
	fs.IntVar(&c.MaxPending, "max-pending", 1000, "handshakes in flight at once")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", 10*time.Second, "bound on dial plus hello")
	fs.Float64Var(&c.MsgRate, "msg-rate", 0, "property reports per second per device, fractional ok (0: none)")
	fs.IntVar(&c.Payload, "payload", 64, "bytes of the reported property value (a string)")
	fs.BoolVar(&c.Ack, "ack", false, "ask for acks (seq) and measure their latency")
	fs.BoolVar(&c.Counter, "counter", false, "add property \"n\" to each report: 1, 2, 3... per device (platform-side loss and order checks)")
	fs.IntVar(&c.Window, "window", 16, "with -ack: reports waiting for an ack per device; a full window skips reports")
	fs.BoolVar(&c.Answer, "answer", false, "answer commands and property set/get with success")
	fs.DurationVar(&c.Hold, "hold", 30*time.Second, "keep the devices connected this long after all connected")
	fs.DurationVar(&c.Drain, "drain", 5*time.Second, "after -hold, stop reporting and wait this long at most for outstanding acks")
	fs.DurationVar(&c.Duration, "duration", 10*time.Minute, "bound on the whole run")
	fs.DurationVar(&c.Report, "report", 5*time.Second, "progress line interval on stderr (0: none)")
	fs.IntVar(&c.RecvQueue, "recv-queue", 4, "frames buffered per device before its reader stops")
	fs.Uint64Var(&o.maxFDs, "max-fds", 0, "cap -n to this many open files (0: RLIMIT_NOFILE)")
	fs.BoolVar(&o.json, "json", false, "print the summary as JSON")
	fs.BoolVar(&o.strict, "strict", false, "exit 1 if any device did not connect")
	registerFloodFlags(fs, &c.Flood)
	if err := fs.Parse(args); err != nil {
		return c, o, err
	}
	if fs.NArg() > 0 {
		return c, o, usagef("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.Sources, err = parseSources(o.src); err != nil {
		return c, o, err
	}
	switch {
	case o.secretFile != "" && o.secretHex != "":
		return c, o, usagef("use -secret-file or -secret-hex, not both")
	case o.secretFile != "":
		c.Secret, err = readSecretFile(o.secretFile)
	case o.secretHex != "":
		c.Secret, err = parseSecretHex(o.secretHex)
	}
	if err != nil {
		return c, o, err
	}
	return c, o, c.validate()
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	if o.printSecrets {
		if cfg.Secret == nil {
			fmt.Fprintln(stderr, usagef("-print-secrets needs -secret-file or -secret-hex"))
			return exitUsage
		}
		for i := range cfg.N {
			node := cfg.nodeID(i)
			fmt.Fprintf(stdout, "%s %s\n", node, cfg.secretFor(node))
		}
		return exitOK
	}

	limit := o.maxFDs
	if limit == 0 {
		if limit, err = openFileLimit(); err != nil {
			fmt.Fprintf(stderr, "devicesim: warning: cannot read RLIMIT_NOFILE, -n is not capped: %v\n", err)
		}
	}
	if limit > 0 && cfg.Flood.enabled() {
		// The attackers' sockets come out of the same allowance.
		limit -= min(limit, cfg.Flood.fds())
	}
	if n, capped := capDevices(cfg.N, limit); capped {
		if n < 1 {
			fmt.Fprintf(stderr, "devicesim: an open-file limit of %d leaves no room for devices\n", limit)
			return exitFailed
		}
		fmt.Fprintf(stderr, "devicesim: warning: an open-file limit of %d allows %d devices: -n %d lowered to %d\n", limit, n, cfg.N, n)
		cfg.N = n
	}

	fl, err := newFlood(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	var s *sim
	if cfg.N > 0 {
		if s, err = newSim(cfg, stderr); err != nil {
			fmt.Fprintln(stderr, err)
			return exitUsage
		}
	}
	// The flood runs next to the devices; each prints its summary.
	var floodSums []FloodSummary
	var attackers sync.WaitGroup
	if fl != nil {
		fmt.Fprintf(stderr, "devicesim: flooding kinds=%d attackers=%d rate=%v/s for %s\n", len(cfg.Flood.Kinds), cfg.Flood.N, cfg.Flood.Rate, cfg.Flood.Duration)
		attackers.Go(func() { floodSums = fl.run(ctx) })
	}
	code := exitOK
	if s != nil {
		fmt.Fprintf(stderr, "devicesim: starting n=%d addr=%s codec=%s nodes=%s..%s\n", cfg.N, cfg.Addr, cfg.Codec, cfg.nodeID(0), cfg.nodeID(cfg.N-1))
		code = report(s.run(ctx), o, stdout, stderr)
	}
	attackers.Wait()
	if fl != nil {
		if err := printFlood(stdout, floodSums, o.json); err != nil {
			fmt.Fprintln(stderr, "devicesim:", err)
			return exitFailed
		}
	}
	return code
}

// report prints the devices' summary and returns the exit code.
func report(sum Summary, o options, stdout, stderr io.Writer) int {
	if o.json {
		b, err := sum.JSON()
		if err != nil {
			fmt.Fprintln(stderr, "devicesim:", err)
			return exitFailed
		}
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		fmt.Fprintln(stdout, sum.Line())
	}
	if o.strict && sum.Connected < int64(sum.Devices) {
		return exitFailed
	}
	return exitOK
}
