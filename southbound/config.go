package southbound

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/subgate/subgate/southbound/frame"
)

// Auth modes (Config.Auth).
const (
	// AuthOpen lets any device log in with the node id it presents,
	// optionally restricted by Config.AllowList.
	AuthOpen = "open"
	// AuthToken sends a challenge nonce on connect; the hello must carry
	// the proof computed with the device's secret (see frame.Proof).
	AuthToken = "token"
	// AuthMTLS accepts only devices on the TLS listener whose client
	// certificate, verified against ClientCAFile, names the node id in its
	// common name.
	AuthMTLS = "mtls"
)

// Second-login policies (Config.SecondLogin).
const (
	// KickOld closes the connection already logged in with the node id
	// (error frame "kicked") and lets the new one in.
	KickOld = "kick-old"
	// RejectNew refuses the new connection with a "duplicate" error frame.
	RejectNew = "reject-new"
)

// Defaults applied to zero values by Config.SetDefaults.
const (
	DefaultWorkerQueue  = 4096
	DefaultMaxConns     = 100000
	DefaultMaxFrame     = 64 << 10
	DefaultHelloTimeout = 10 * time.Second
	DefaultIdleTimeout  = 300 * time.Second
	DefaultMaxOutbound  = 256 << 10
	DefaultMaxBadFrames = 5
	DefaultRateStrikes  = 20
	DefaultWriteTimeout = 30 * time.Second
)

// Upper bounds that keep a typo in a config file from turning into an
// allocation the host cannot satisfy.
const (
	maxMaxFrame    = 16 << 20
	maxMaxOutbound = 256 << 20
	// maxRateBurst keeps a full bucket exact in Conn's float32 counter.
	maxRateBurst   = 1 << 24
	maxWorkers     = 4096
	maxLoops       = 1024
	maxWorkerQueue = 1 << 20
	maxAllowList   = 1 << 20
	maxStrikes     = 10000 // counters are uint16
)

// Config configures the southbound server. The zero value of every bound
// means its default (see SetDefaults); Validate reports the first bad key by
// its name in the config file ("southbound.<key>").
type Config struct {
	// Listen is the plain-TCP device address, "tcp://:8081" or ":8081"
	// ("127.0.0.1:0" in tests). Empty disables the plain listener (then
	// TLSListen must be set).
	Listen string `yaml:"listen"`
	// TLSListen is an optional crypto/tls listener for devices that
	// authenticate with a client certificate ("" = off). It needs
	// TLSCertFile, TLSKeyFile and ClientCAFile.
	TLSListen string `yaml:"tls_listen"`
	// TLSCertFile and TLSKeyFile are the gateway's PEM certificate and key.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// ClientCAFile holds the PEM CA certificates that device certificates
	// must chain to.
	ClientCAFile string `yaml:"client_ca_file"`
	// Codec is the device wire format: "demo", "jsonl" or "binary".
	Codec string `yaml:"codec"`
	// Auth is "open", "token" or "mtls" (see the Auth constants). Devices
	// on the TLS listener are always authenticated by their certificate.
	Auth string `yaml:"auth"`
	// AllowList, when non-empty, is the only node ids (demo: the device
	// ids the devices send) that may log in, whatever the auth mode.
	AllowList []string `yaml:"allow_list"`
	// Loops is the number of gnet event loops (0 = GOMAXPROCS).
	Loops int `yaml:"loops"`
	// Workers is the number of worker goroutines that run the Handler
	// (default 4*GOMAXPROCS). A connection always maps to the same
	// worker, which keeps each device's frames in order.
	Workers int `yaml:"workers"`
	// WorkerQueue bounds the frames waiting for each worker (default
	// 4096). When it is full a frame is answered with a busy error frame
	// and counted.
	WorkerQueue int `yaml:"worker_queue"`
	// MaxConns bounds the open connections (default 100000).
	MaxConns int `yaml:"max_conns"`
	// MaxConnsPerIP bounds the open connections from one source address
	// (0 = unlimited).
	MaxConnsPerIP int `yaml:"max_conns_per_ip"`
	// MaxFrame is the largest frame in bytes (default 64 KiB).
	MaxFrame int `yaml:"max_frame"`
	// HelloTimeout closes a connection that has not sent a hello (demo:
	// logged in) this long after it opened (default 10s).
	HelloTimeout time.Duration `yaml:"hello_timeout"`
	// IdleTimeout closes a connection that sent nothing for this long
	// (default 300s). Native codecs get a ping at IdleTimeout/2 first.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// RatePerSec and RateBurst are the per-connection uplink token bucket
	// (RatePerSec 0 = off; RateBurst 0 = max(1, RatePerSec)). A frame
	// over the rate is dropped and answered with a rate_limited error
	// frame.
	RatePerSec float64 `yaml:"rate_per_sec"`
	RateBurst  int     `yaml:"rate_burst"`
	// RateStrikes is how many rate-limited frames in a row close the
	// connection (default 20).
	RateStrikes int `yaml:"rate_strikes"`
	// MaxOutbound bounds the bytes waiting to be written to one device
	// (default 256 KiB); a device that stops reading is cut off
	// (slow_reader).
	MaxOutbound int `yaml:"max_outbound"`
	// SecondLogin is "kick-old" (default) or "reject-new".
	SecondLogin string `yaml:"second_login"`
	// MaxBadFrames is the number of bad frames in a row (decode errors,
	// frames out of place) that close the connection (default 5). For the
	// demo codec it also bounds refused logins in a row.
	MaxBadFrames int `yaml:"max_bad_frames"`
	// WriteTimeout bounds one socket write on a TLS connection (default
	// 30s). gnet connections never block on writes; MaxOutbound bounds
	// them instead.
	WriteTimeout time.Duration `yaml:"write_timeout"`

	// CodecImpl, when set, is used instead of the codec named by Codec
	// (embedders and tests with their own wire format).
	CodecImpl frame.Codec `yaml:"-"`
}

// ErrConfig is wrapped by every error Validate returns.
var ErrConfig = errors.New("southbound: invalid config")

func configErr(key, format string, args ...any) error {
	return fmt.Errorf("%w: southbound.%s: %s", ErrConfig, key, fmt.Sprintf(format, args...))
}

// SetDefaults replaces zero values by their defaults.
func (c *Config) SetDefaults() {
	procs := runtime.GOMAXPROCS(0)
	if c.Codec == "" {
		c.Codec = "jsonl"
	}
	if c.Auth == "" {
		c.Auth = AuthOpen
	}
	if c.Workers == 0 {
		c.Workers = 4 * procs
	}
	if c.WorkerQueue == 0 {
		c.WorkerQueue = DefaultWorkerQueue
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = DefaultMaxFrame
	}
	if c.HelloTimeout == 0 {
		c.HelloTimeout = DefaultHelloTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.RatePerSec > 0 && c.RateBurst == 0 {
		c.RateBurst = max(1, int(c.RatePerSec))
	}
	if c.RateStrikes == 0 {
		c.RateStrikes = DefaultRateStrikes
	}
	if c.MaxOutbound == 0 {
		c.MaxOutbound = DefaultMaxOutbound
	}
	if c.SecondLogin == "" {
		c.SecondLogin = KickOld
	}
	if c.MaxBadFrames == 0 {
		c.MaxBadFrames = DefaultMaxBadFrames
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
}

// codecName is the name of the codec the config selects.
func (c *Config) codecName() string {
	if c.CodecImpl != nil {
		return c.CodecImpl.Name()
	}
	return c.Codec
}

// Validate checks c after defaults were applied to a copy of it, so it may
// be called on a config with zero values. It names the first bad key.
func (c *Config) Validate() error {
	d := *c
	d.SetDefaults()
	return d.validate()
}

func (c *Config) validate() error {
	if c.Listen == "" && c.TLSListen == "" {
		return configErr("listen", "no listener: set listen or tls_listen")
	}
	if c.Listen != "" {
		if err := checkListen(c.Listen, true); err != nil {
			return configErr("listen", "%v", err)
		}
	}
	native := true
	switch name := c.codecName(); name {
	case "jsonl", "binary":
	case "demo":
		native = false
	default:
		if c.CodecImpl == nil {
			return configErr("codec", "%q is not one of demo, jsonl, binary", name)
		}
		native = c.CodecImpl.Native()
	}
	switch c.Auth {
	case AuthOpen:
	case AuthToken:
		if !native {
			return configErr("auth", "token auth needs a hello frame, which the %s codec does not have: use open (with allow_list) or a native codec", c.codecName())
		}
	case AuthMTLS:
		if c.TLSListen == "" {
			return configErr("tls_listen", "auth mtls needs the TLS listener")
		}
		if c.Listen != "" {
			return configErr("listen", "must be empty when auth is mtls: plain TCP devices cannot present a certificate")
		}
	default:
		return configErr("auth", "%q is not one of open, token, mtls", c.Auth)
	}
	if c.TLSListen != "" {
		if !native {
			return configErr("tls_listen", "the %s codec has no hello to bind a certificate to", c.codecName())
		}
		if err := checkListen(c.TLSListen, false); err != nil {
			return configErr("tls_listen", "%v", err)
		}
		for _, f := range []struct{ key, path string }{
			{"tls_cert_file", c.TLSCertFile}, {"tls_key_file", c.TLSKeyFile}, {"client_ca_file", c.ClientCAFile},
		} {
			if f.path == "" {
				return configErr(f.key, "required with tls_listen")
			}
			if _, err := os.Stat(f.path); err != nil {
				return configErr(f.key, "%v", err)
			}
		}
	}
	if len(c.AllowList) > maxAllowList {
		return configErr("allow_list", "%d entries, at most %d", len(c.AllowList), maxAllowList)
	}
	for _, id := range c.AllowList {
		if id == "" || len(id) > 128 {
			return configErr("allow_list", "entry %q must be 1-128 characters", id)
		}
	}
	switch {
	case c.Loops < 0 || c.Loops > maxLoops:
		return configErr("loops", "%d out of range 0-%d", c.Loops, maxLoops)
	case c.Workers < 1 || c.Workers > maxWorkers:
		return configErr("workers", "%d out of range 1-%d", c.Workers, maxWorkers)
	case c.WorkerQueue < 1 || c.WorkerQueue > maxWorkerQueue:
		return configErr("worker_queue", "%d out of range 1-%d", c.WorkerQueue, maxWorkerQueue)
	case c.MaxConns < 1:
		return configErr("max_conns", "must be positive, got %d", c.MaxConns)
	case c.MaxConnsPerIP < 0:
		return configErr("max_conns_per_ip", "must not be negative, got %d", c.MaxConnsPerIP)
	case c.MaxFrame < 64 || c.MaxFrame > maxMaxFrame:
		return configErr("max_frame", "%d out of range 64-%d", c.MaxFrame, maxMaxFrame)
	case c.HelloTimeout < time.Millisecond:
		return configErr("hello_timeout", "%v is too short", c.HelloTimeout)
	case c.IdleTimeout < time.Millisecond:
		return configErr("idle_timeout", "%v is too short", c.IdleTimeout)
	case c.RatePerSec < 0:
		return configErr("rate_per_sec", "must not be negative, got %v", c.RatePerSec)
	case c.RateBurst < 0 || c.RateBurst > maxRateBurst:
		return configErr("rate_burst", "%d out of range 0-%d", c.RateBurst, maxRateBurst)
	case c.RateStrikes < 1 || c.RateStrikes > maxStrikes:
		return configErr("rate_strikes", "%d out of range 1-%d", c.RateStrikes, maxStrikes)
	case c.MaxOutbound < c.MaxFrame || c.MaxOutbound > maxMaxOutbound:
		return configErr("max_outbound", "%d out of range max_frame (%d)-%d", c.MaxOutbound, c.MaxFrame, maxMaxOutbound)
	case c.SecondLogin != KickOld && c.SecondLogin != RejectNew:
		return configErr("second_login", "%q is not one of kick-old, reject-new", c.SecondLogin)
	case c.MaxBadFrames < 1 || c.MaxBadFrames > maxStrikes:
		return configErr("max_bad_frames", "%d out of range 1-%d", c.MaxBadFrames, maxStrikes)
	case c.WriteTimeout < time.Millisecond:
		return configErr("write_timeout", "%v is too short", c.WriteTimeout)
	}
	return nil
}

// checkListen accepts "host:port" and, for gnet, "tcp://host:port" (also
// tcp4, tcp6).
func checkListen(addr string, schemeOK bool) error {
	hostport := addr
	if scheme, rest, ok := strings.Cut(addr, "://"); ok {
		if !schemeOK {
			return fmt.Errorf("%q: no scheme allowed, use host:port", addr)
		}
		switch scheme {
		case "tcp", "tcp4", "tcp6":
		default:
			return fmt.Errorf("%q: scheme must be tcp, tcp4 or tcp6", addr)
		}
		hostport = rest
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return fmt.Errorf("%q: %v", addr, err)
	}
	return nil
}

// splitListen returns the network and host:port of a Listen value.
func splitListen(addr string) (network, hostport string) {
	if scheme, rest, ok := strings.Cut(addr, "://"); ok {
		return scheme, rest
	}
	return "tcp", addr
}
