// Command iotdasim runs a local Huawei Cloud IoTDA platform simulator: an
// MQTT broker that checks logins and traffic the IoTDA way and answers a
// gateway's system messages, plus an HTTP JSON API to send commands,
// property requests, messages and events to the gateway and to manage its
// sub-devices. It is a development and test tool; see package
// github.com/subgate/subgate/northbound/iotdasim.
//
//	iotdasim -listen 127.0.0.1:1883 -http 127.0.0.1:8090 -device gw1:secret1 [-device ...]
//	iotdasim -load-http 127.0.0.1:8091 ...   also serve the load API (bulk adds, command load, status summary)
//
// Without -device it serves the development gateway of subgate -dev. It
// exits cleanly on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/subgate/subgate/northbound/iotdasim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}

// deviceFlags collects repeated -device id:secret flags.
type deviceFlags map[string]string

func (d deviceFlags) String() string {
	ids := make([]string, 0, len(d))
	for id := range d {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return strings.Join(ids, ",") // secrets are never printed
}

func (d deviceFlags) Set(v string) error {
	id, secret, ok := strings.Cut(v, ":")
	if !ok || id == "" || secret == "" {
		return errors.New("want device_id:secret")
	}
	if _, dup := d[id]; dup {
		return fmt.Errorf("device %q given twice", id)
	}
	d[id] = secret
	return nil
}

// run parses args, runs the simulator until ctx is done and returns the
// exit code. ready, if not nil, receives the started simulator.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, ready func(*iotdasim.Sim)) int {
	fs := flag.NewFlagSet("iotdasim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	devices := deviceFlags{}
	var (
		cfg      iotdasim.Config
		logLevel slog.Level
		refuse   bool
	)
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:1883", "MQTT `address`")
	fs.StringVar(&cfg.HTTPListen, "http", "127.0.0.1:8090", "HTTP API `address` (empty = off)")
	fs.Var(devices, "device", "gateway `id:secret` (repeatable; default the subgate -dev gateway)")
	fs.StringVar(&cfg.TLSListen, "tls-listen", "", "MQTTS `address` (needs -tls-cert and -tls-key)")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "server certificate PEM `file`")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "server key PEM `file`")
	fs.StringVar(&cfg.ClientCAFile, "client-ca", "", "CA PEM `file` for X.509 device login")
	fs.BoolVar(&cfg.CheckTimestamp, "check-timestamp", false, "refuse sign type 1 logins whose timestamp is not the current hour ±1")
	fs.IntVar(&cfg.MaxMsgsPerSec, "max-msgs-per-sec", iotdasim.DefaultMaxMsgsPerSec, "per-connection upstream cap counted as violations (<0 = off)")
	fs.BoolVar(&refuse, "refuse-adds", false, "answer every add_sub_device_request with failure")
	fs.IntVar(&cfg.MaxRecords, "max-records", iotdasim.DefaultMaxRecords, "recorded items kept per kind")
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "log `level` (DEBUG, INFO, WARN, ERROR)")
	loadHTTP := loadFlag(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "iotdasim: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if len(devices) == 0 {
		gw, secret := iotdasim.DevDefaults()
		devices[gw] = secret
	}
	cfg.Devices = devices
	cfg.AutoAcceptAdds = !refuse
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))

	sim, err := iotdasim.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "iotdasim: %v\n", err)
		return 1
	}
	if err := sim.Start(); err != nil {
		fmt.Fprintf(stderr, "iotdasim: %v\n", err)
		return 1
	}
	printBanner(stdout, sim, devices)
	if *loadHTTP != "" {
		closeLoad, err := loadServer(sim, *loadHTTP, cfg.Logger, stdout)
		if err != nil {
			fmt.Fprintf(stderr, "iotdasim: %v\n", err)
			_ = sim.Close()
			return 1
		}
		defer func() {
			if err := closeLoad(); err != nil {
				fmt.Fprintf(stderr, "iotdasim: load API: %v\n", err)
			}
		}()
	}
	if ready != nil {
		ready(sim)
	}
	<-ctx.Done()
	if err := sim.Close(); err != nil {
		fmt.Fprintf(stderr, "iotdasim: close: %v\n", err)
		return 1
	}
	return 0
}

func printBanner(w io.Writer, sim *iotdasim.Sim, devices deviceFlags) {
	ids := strings.Split(devices.String(), ",")
	fmt.Fprintf(w, "iotdasim: MQTT on %s", sim.Addr())
	if a := sim.TLSAddr(); a != "" {
		fmt.Fprintf(w, ", MQTTS on %s", a)
	}
	fmt.Fprintf(w, "\ngateways: %s\n", strings.Join(ids, ", "))
	h := sim.HTTPAddr()
	if h == "" {
		return
	}
	gw := ids[0]
	fmt.Fprintf(w, "HTTP API on http://%s, for example:\n", h)
	fmt.Fprintf(w, "  curl -s 'http://%s/api/devices?gateway=%s'\n", h, gw)
	fmt.Fprintf(w, "  curl -s -X POST http://%s/api/devices -d '{\"gateway\":\"%s\",\"node_id\":\"node1\",\"product_id\":\"demo\"}'\n", h, gw)
	fmt.Fprintf(w, "  curl -s -X POST http://%s/api/commands -d '{\"gateway\":\"%s\",\"device_id\":\"demo_node1\",\"service_id\":\"svc\",\"command_name\":\"ping\",\"paras\":{}}'\n", h, gw)
	fmt.Fprintf(w, "  curl -s -X POST http://%s/api/properties/get -d '{\"gateway\":\"%s\",\"device_id\":\"demo_node1\"}'\n", h, gw)
	fmt.Fprintf(w, "  curl -s -X POST http://%s/api/messages -d '{\"gateway\":\"%s\",\"device_id\":\"demo_node1\",\"content\":\"hello\"}'\n", h, gw)
	fmt.Fprintf(w, "  curl -s 'http://%s/api/received?gateway=%s&limit=20'\n", h, gw)
	fmt.Fprintf(w, "  curl -s -X DELETE http://%s/api/devices/demo_node1\n", h)
	fmt.Fprintf(w, "  curl -s http://%s/api/errors\n", h)
}
