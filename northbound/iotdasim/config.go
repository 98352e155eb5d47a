package iotdasim

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/subdevice"
)

// Dev gateway credentials used by subgate's -dev mode and by cmd/iotdasim
// when no -device is given.
const (
	devGatewayID = "subgate-dev-gw"
	devSecret    = "subgate-dev-secret"
)

// DevDefaults returns the gateway id and secret of the development setup.
func DevDefaults() (gatewayID, secret string) { return devGatewayID, devSecret }

// DevConfig returns a Config for in-process development: one gateway with
// the DevDefaults credentials on 127.0.0.1:0, adds accepted.
func DevConfig() Config {
	return Config{
		Listen:         "127.0.0.1:0",
		Devices:        map[string]string{devGatewayID: devSecret},
		AutoAcceptAdds: true,
	}
}

// Defaults applied to zero Config fields.
const (
	DefaultMaxMsgsPerSec  = 50
	DefaultMaxRecords     = 100_000
	DefaultInboxSize      = 1024
	DefaultConnectTimeout = 10 * time.Second
	DefaultHTTPBodyLimit  = 2 << 20
	// maxPacketSize bounds any MQTT packet the broker reads. Publishes whose
	// payload is over MaxPublishSize but under this bound are refused by the
	// simulator with a recorded error; larger packets are refused by mochi
	// before they are read.
	maxPacketSize = 1<<20 + 64<<10
)

// Config configures a Sim. The zero value of every optional field has a
// documented default.
type Config struct {
	// Listen is the plain MQTT TCP address, e.g. "127.0.0.1:1883" or
	// "127.0.0.1:0" for a free port (see Sim.Addr). Required.
	Listen string
	// TLSListen is an optional MQTTS address. It needs TLSCert and TLSKey
	// (PEM files). With ClientCAFile, devices may log in with an X.509
	// client certificate whose subject CN is their device id, with no
	// password (iotda-protocol §1.3).
	TLSListen    string
	TLSCert      string
	TLSKey       string
	ClientCAFile string
	// HTTPListen is an optional address of the HTTP JSON API ("" = off).
	HTTPListen string
	// Devices maps each gateway device id to its secret. Only these devices
	// may connect.
	Devices map[string]string
	// CheckTimestamp makes sign type 1 logins require ts within one hour
	// of the simulator's clock (iotda-protocol §1.2; the platform's real
	// tolerance is unconfirmed, Appendix B item 7).
	CheckTimestamp bool
	// MaxMsgsPerSec is the per-connection upstream PUBLISH cap (0 = 50,
	// negative = off). Every PUBLISH that makes more than this many within
	// one second is counted in Violations; it is still processed.
	MaxMsgsPerSec int
	// AutoAcceptAdds answers add_sub_device_request with success for every
	// valid new device except node ids refused by RefuseAdd. When false,
	// every add request is answered with all devices failed
	// ("SIM.ADD_REFUSED"), which lets a test exercise refusals. DevConfig
	// and cmd/iotdasim set it.
	AutoAcceptAdds bool
	// MaxRecords bounds each kind of recorded item (messages, properties,
	// events, status updates, publishes, errors, change log); 0 = 100000.
	// The oldest items are dropped first and counted (Sim.Dropped).
	MaxRecords int
	// InboxSize bounds upstream publishes waiting for the platform
	// goroutine (0 = 1024).
	InboxSize int
	// ConnectTimeout bounds the time from TCP accept to CONNECT (0 = 10s).
	ConnectTimeout time.Duration
	// CommandTimeout is the platform's wait for a command, property set or
	// property get response when the caller's context has no deadline
	// (0 = iotda.CommandTimeout, 20 s; iotda-protocol §2.6).
	CommandTimeout time.Duration
	// Clock is the time source for timestamps, rate windows and time sync
	// (nil = time.Now). It is called from several goroutines and must be
	// safe for concurrent use. Timeouts of waits use contexts, not Clock.
	Clock func() time.Time
	// BootstrapAddress, when set, makes the simulator also play the
	// device provisioning service: a publish on sys/bootstrap/up is answered
	// on sys/bootstrap/down with {"address": BootstrapAddress}
	// (iotda-protocol §5.6).
	BootstrapAddress string
	// Logger receives the simulator's and the broker's logs (nil = discard).
	Logger *slog.Logger
}

// Errors of configuration and of the downstream API.
var (
	ErrConfig         = errors.New("iotdasim: invalid config")
	ErrClosed         = errors.New("iotdasim: simulator closed")
	ErrNotStarted     = errors.New("iotdasim: simulator not started")
	ErrStopped        = errors.New("iotdasim: simulator stopped")
	ErrUnknownGateway = errors.New("iotdasim: unknown gateway")
	ErrUnknownDevice  = errors.New("iotdasim: unknown device")
	ErrNotConnected   = errors.New("iotdasim: gateway not connected")
	ErrTimeout        = errors.New("iotdasim: no response from device")
	ErrDeviceExists   = errors.New("iotdasim: device exists")
)

func (c *Config) applyDefaults() {
	if c.MaxMsgsPerSec == 0 {
		c.MaxMsgsPerSec = DefaultMaxMsgsPerSec
	}
	if c.MaxRecords <= 0 {
		c.MaxRecords = DefaultMaxRecords
	}
	if c.InboxSize <= 0 {
		c.InboxSize = DefaultInboxSize
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.CommandTimeout <= 0 {
		c.CommandTimeout = iotda.CommandTimeout
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	if c.Listen == "" {
		return fmt.Errorf("%w: Listen is required", ErrConfig)
	}
	if c.TLSListen != "" && (c.TLSCert == "" || c.TLSKey == "") {
		return fmt.Errorf("%w: TLSListen needs TLSCert and TLSKey", ErrConfig)
	}
	if c.ClientCAFile != "" && c.TLSListen == "" {
		return fmt.Errorf("%w: ClientCAFile needs TLSListen", ErrConfig)
	}
	if len(c.Devices) == 0 {
		return fmt.Errorf("%w: no devices", ErrConfig)
	}
	for id, secret := range c.Devices {
		if err := subdevice.ValidateDeviceID(id); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
		if secret == "" {
			return fmt.Errorf("%w: empty secret for %q", ErrConfig, id)
		}
	}
	return nil
}
