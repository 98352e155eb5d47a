package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/subgate/subgate/gateway/admin"
	"github.com/subgate/subgate/southbound/frame"
	"github.com/subgate/subgate/subdevice"
)

// adminBackend implements admin.Backend over the gateway.
type adminBackend struct{ g *Gateway }

var _ admin.Backend = adminBackend{}

func (b adminBackend) Devices(f subdevice.Filter, offset, limit int) ([]subdevice.Device, int) {
	return b.g.devs.List(f, offset, limit)
}

func (b adminBackend) Device(id string) (subdevice.Device, bool) {
	if d, ok := b.g.devs.ByID(id); ok {
		return d, true
	}
	return b.g.devs.ByNode(id)
}

func (b adminBackend) Online(deviceID string) bool {
	_, ok := b.g.connByDevice(deviceID)
	return ok
}

func (b adminBackend) DeleteDevice(ctx context.Context, id string) error {
	d, ok := b.Device(id)
	if !ok {
		return fmt.Errorf("%w: sub-device %s", admin.ErrNotFound, id)
	}
	if !b.g.north.Connected() {
		return fmt.Errorf("%w: the platform is not connected", admin.ErrUnavailable)
	}
	done := make(chan error, 1)
	b.g.regs.requestDelete(d.DeviceID, done)
	select {
	case err := <-done:
		if errors.Is(err, errPlatformRefused) {
			return fmt.Errorf("%w: %v", admin.ErrRejected, err)
		}
		if err != nil {
			return fmt.Errorf("%w: %v", admin.ErrUnavailable, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: no answer from the platform yet", admin.ErrUnavailable)
	}
}

func (b adminBackend) Kick(id string) bool {
	d, ok := b.Device(id)
	if !ok {
		return false
	}
	c, ok := b.g.connByDevice(d.DeviceID)
	if !ok {
		return false
	}
	c.Close(frame.CodeKicked, "disconnected by an operator")
	return true
}

func (b adminBackend) ProvisionToken(ctx context.Context, nodeID string, secret []byte) error {
	if err := subdevice.ValidateNodeID(nodeID); err != nil {
		return err
	}
	return b.g.st.PutSecret(ctx, nodeID, secret)
}

func (b adminBackend) RevokeToken(ctx context.Context, nodeID string) error {
	return b.g.st.DeleteSecret(ctx, nodeID)
}

func (b adminBackend) Ready() (bool, string) {
	g := b.g
	if g.stopped.Load() {
		return false, "shutting down"
	}
	if g.st == nil || g.st.Closed() {
		return false, "store closed"
	}
	up, since, lastErr := g.north.State()
	if !up {
		reason := "northbound not connected"
		if lastErr != nil {
			reason += ": " + lastErr.Error()
		}
		if !since.IsZero() {
			reason += fmt.Sprintf(" (since %s)", since.UTC().Format(time.RFC3339))
		}
		return false, reason
	}
	return true, ""
}

// Status is the summary behind GET /api/v1/status and `subgate status`.
type Status struct {
	Version    string         `json:"version"`
	Uptime     string         `json:"uptime"`
	GatewayID  string         `json:"gateway_id"`
	Northbound NorthStatus    `json:"northbound"`
	Southbound SouthStatus    `json:"southbound"`
	Subdevices map[string]int `json:"subdevices"`
	Outbox     OutboxStatus   `json:"outbox"`
	Pending    int            `json:"pending_requests"`
}

// NorthStatus is the MQTT session state.
type NorthStatus struct {
	Server    string `json:"server"`
	Connected bool   `json:"connected"`
	Since     string `json:"since,omitempty"`
	LastError string `json:"last_error,omitempty"`
}

// SouthStatus is the device server state.
type SouthStatus struct {
	Listen      string `json:"listen"`
	Codec       string `json:"codec"`
	Auth        string `json:"auth"`
	Connections int    `json:"connections"`
	Sessions    int    `json:"sessions"`
}

// OutboxStatus is the durable queue's depth.
type OutboxStatus struct {
	Messages   int     `json:"messages"`
	Bytes      int64   `json:"bytes"`
	OldestAgeS float64 `json:"oldest_age_seconds"`
	Dropped    uint64  `json:"dropped"`
}

func (b adminBackend) Status() any {
	g := b.g
	up, since, lastErr := g.north.State()
	ns := NorthStatus{Server: g.cfg.Northbound.Server, Connected: up}
	if !since.IsZero() {
		ns.Since = since.UTC().Format(time.RFC3339)
	}
	if lastErr != nil {
		ns.LastError = lastErr.Error()
	}
	counts := map[string]int{}
	for st, n := range g.devs.CountByStatus() {
		counts[string(st)] = n
	}
	counts["total"] = g.devs.Len()
	os := g.st.OutboxStats()
	age := 0.0
	if !os.Oldest.IsZero() {
		age = g.now().Sub(os.Oldest).Seconds()
	}
	return Status{
		Version:    g.version,
		Uptime:     g.now().Sub(g.start).Round(time.Second).String(),
		GatewayID:  g.gw,
		Northbound: ns,
		Southbound: SouthStatus{Listen: addrString(g.south.Addr()), Codec: g.cfg.Southbound.Codec,
			Auth: g.cfg.Southbound.Auth, Connections: g.south.Count(), Sessions: g.south.Sessions()},
		Subdevices: counts,
		Outbox:     OutboxStatus{Messages: os.Messages, Bytes: os.Bytes, OldestAgeS: age, Dropped: os.Dropped},
		Pending:    g.corr.len(),
	}
}

func (b adminBackend) Config() any { return b.g.cfg }
