// Command subgate is the subgate gateway daemon and its operator CLI.
//
//	subgate -config /etc/subgate/subgate.yaml   run the gateway
//	subgate -dev                                run with an in-process IoTDA simulator
//	subgate devices list | status | ...         talk to a running gateway's admin API
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/subgate/subgate/gateway"
	"github.com/subgate/subgate/metrics"
	"github.com/subgate/subgate/northbound/iotdasim"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) > 1 && isCLICommand(os.Args[1]) {
		os.Exit(runCLI(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

func run(args, env []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("subgate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "path of the YAML config file")
	dev := fs.Bool("dev", false, "run with an in-process IoTDA simulator on loopback (no cloud account needed)")
	devHTTP := fs.String("dev-http", "127.0.0.1:8090", "with -dev: address of the simulator's HTTP API")
	printConfig := fs.Bool("print-config", false, "print the effective config (secrets redacted) and exit")
	checkConfig := fs.Bool("check-config", false, "validate the config and exit 0 (valid) or 1")
	showVersion := fs.Bool("version", false, "print the version and exit")
	healthcheck := fs.String("healthcheck", "", "GET this URL and exit 0 on HTTP 200 (container health checks)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: subgate [flags]\n       subgate devices|tokens|ota|status ... (admin CLI; subgate devices -h)\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "subgate %s %s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	if *healthcheck != "" {
		return probe(*healthcheck, stderr)
	}

	var cfg gateway.Config
	var err error
	if *dev {
		cfg, err = devConfig(*configPath, env)
	} else {
		cfg, err = gateway.LoadConfig(*configPath, env)
	}
	if err != nil {
		fmt.Fprintf(stderr, "subgate: invalid configuration:\n%v\n", err)
		return 1
	}
	if *checkConfig {
		fmt.Fprintln(stdout, "configuration ok")
		return 0
	}
	if *printConfig {
		b, err := cfg.Redacted()
		if err != nil {
			fmt.Fprintln(stderr, "subgate:", err)
			return 1
		}
		stdout.Write(b)
		return 0
	}

	log := cfg.Log.NewLogger(stderr)
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var devSim *iotdasim.Sim
	if *dev {
		sim, err := startDevSim(cfg, *devHTTP, log)
		if err != nil {
			log.Error("cannot start the IoTDA simulator", "err", err)
			return 1
		}
		defer sim.Close()
		cfg.Northbound.Server = "tcp://" + sim.Addr()
		devSim = sim
	}

	reg := metrics.NewRegistry(version)
	gw, err := gateway.New(cfg, gateway.Deps{Logger: log, Registry: reg, Version: version})
	if err != nil {
		log.Error("invalid configuration", "err", err)
		return 1
	}
	if devSim != nil {
		helpDone := make(chan struct{})
		defer func() { stop(); <-helpDone }()
		go func() {
			defer close(helpDone)
			printDevHelp(ctx, stdout, cfg, devSim, gw.Ready())
		}()
	}
	if err := gw.Run(ctx); err != nil {
		log.Error("gateway stopped with an error", "err", err)
		return 1
	}
	log.Info("gateway stopped")
	return 0
}

// devConfig is the configuration of `subgate -dev`: the defaults, a
// loopback device port, the simulator's gateway credentials, and
// auto-registration with a dev product id. A -config file and SUBGATE_*
// variables still apply on top.
func devConfig(path string, env []string) (gateway.Config, error) {
	gw, secret := iotdasim.DevDefaults()
	base := []string{
		"SUBGATE_NORTHBOUND_SERVER=tcp://127.0.0.1:1", // replaced by the simulator's address
		"SUBGATE_NORTHBOUND_DEVICE_ID=" + gw,
		"SUBGATE_NORTHBOUND_SECRET=" + secret,
		"SUBGATE_NORTHBOUND_MIN_BACKOFF=200ms",
		"SUBGATE_NORTHBOUND_MAX_BACKOFF=2s",
		"SUBGATE_SOUTHBOUND_LISTEN=127.0.0.1:8081",
		"SUBGATE_SUBDEVICE_DEFAULT_PRODUCT_ID=subgate-dev-product",
		"SUBGATE_SUBDEVICE_PROPERTY_GET_FROM_CACHE=1",
		"SUBGATE_STORE_DIR=./data-dev",
		"SUBGATE_GATEWAY_SHUTDOWN_TIMEOUT=5s",
	}
	return gateway.LoadConfig(path, append(base, env...))
}

func startDevSim(cfg gateway.Config, httpAddr string, log *slog.Logger) (*iotdasim.Sim, error) {
	sc := iotdasim.DevConfig()
	sc.Devices = map[string]string{cfg.Northbound.DeviceID: cfg.Northbound.Secret.Reveal()}
	sc.HTTPListen = httpAddr
	sc.Logger = log.With("component", "iotdasim")
	sim, err := iotdasim.New(sc)
	if err != nil {
		return nil, err
	}
	if err := sim.Start(); err != nil {
		return nil, err
	}
	return sim, nil
}

func printDevHelp(ctx context.Context, w io.Writer, cfg gateway.Config, sim *iotdasim.Sim, ready <-chan struct{}) {
	select {
	case <-ctx.Done():
		return
	case <-ready:
	}
	gw := cfg.Northbound.DeviceID
	fmt.Fprintf(w, `
subgate -dev is running: gateway %[1]s, IoTDA simulator on %[2]s (HTTP API http://%[3]s)

Next steps, in another terminal:
  1. Connect a device (codec %[4]s) and say hello, then report a property:
       nc 127.0.0.1 8081
       {"type":"hello","node_id":"meter1"}
       {"type":"properties","seq":1,"services":[{"service_id":"meter","properties":{"kwh":12.5}}]}
  2. See it at the simulator:
       curl -s 'http://%[3]s/api/devices?gateway=%[1]s'
       curl -s 'http://%[3]s/api/received?gateway=%[1]s'
  3. Send it a command (the device sees a "command" line; answer it in nc with
     {"type":"command_response","request_id":"<id from that line>","result_code":0,"paras":{"ok":true}}):
       curl -s -X POST http://%[3]s/api/commands -d '{"gateway":"%[1]s","device_id":"subgate-dev-product_meter1","service_id":"meter","command_name":"reset","paras":{"hard":false}}'
  4. Operate it:  go run ./cmd/subgate devices list     (or: curl -s http://127.0.0.1:9100/metrics)

The Huawei demo device protocol ("<device_id>|<content>") is served with
SUBGATE_SOUTHBOUND_CODEC=demo go run ./cmd/subgate -dev
`, gw, sim.Addr(), sim.HTTPAddr(), cfg.Southbound.Codec)
}

// probe is the container health check: distroless images have no curl.
func probe(url string, stderr io.Writer) int {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(stderr, "unhealthy:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "unhealthy: HTTP", resp.StatusCode)
		return 1
	}
	return 0
}
