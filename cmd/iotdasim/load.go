package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/subgate/subgate/northbound/iotdasim"
)

// loadFlag registers -load-http, the address of the simulator's load API
// (iotdasim.Sim.LoadHandler: bulk sub-device adds, command load runs with
// round-trip latencies, a status summary for reconnect storms). It is a
// listener of its own because the main HTTP API's routes belong to the
// iotdasim package.
func loadFlag(fs *flag.FlagSet) *string {
	return fs.String("load-http", "", "load API `address` (POST /api/load/devices, /api/load/commands, GET /api/load/status; empty = off)")
}

// loadServer serves sim's load API on addr until its close function is
// called. A load run answers when it ends, so the write timeout is the
// longest run the API accepts; the handler bounds each run itself.
func loadServer(sim *iotdasim.Sim, addr string, log *slog.Logger, banner io.Writer) (closeFn func() error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("load API: %w", err)
	}
	hs := &http.Server{
		Handler:           sim.LoadHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      iotdasim.MaxLoadDuration + iotdasim.MaxLoadTimeout + time.Minute,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan error, 1)
	go func() {
		err := hs.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	fmt.Fprintf(banner, "load API on http://%s (POST /api/load/devices, POST /api/load/commands, GET /api/load/status)\n", ln.Addr())
	return func() error {
		// Close, not Shutdown: a load run in progress ends with its
		// client's connection (the request context).
		cerr := hs.Close()
		return errors.Join(cerr, <-done)
	}, nil
}
