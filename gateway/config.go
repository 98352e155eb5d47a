package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/subgate/subgate/subdevice"
)

// Secret is a configuration value that must never be printed. Its String,
// LogValue and marshalled forms are a placeholder.
type Secret string

const redacted = "[REDACTED]"

func (s Secret) String() string { return s.placeholder() }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.placeholder()) }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.placeholder()) }

// MarshalYAML implements yaml.Marshaler.
func (s Secret) MarshalYAML() (any, error) { return s.placeholder(), nil }

func (s Secret) placeholder() string {
	if s == "" {
		return ""
	}
	return redacted
}

// Reveal returns the secret itself; call it only where the value is used.
func (s Secret) Reveal() string { return string(s) }

// Config is the whole gateway configuration. Every section maps to a YAML
// mapping of the same name, and every key can be overridden by the
// environment variable SUBGATE_<SECTION>_<KEY> (upper case).
type Config struct {
	Gateway    GatewayConfig    `yaml:"gateway" json:"gateway"`
	Northbound NorthboundConfig `yaml:"northbound" json:"northbound"`
	Southbound SouthboundConfig `yaml:"southbound" json:"southbound"`
	Subdevice  SubdeviceConfig  `yaml:"subdevice" json:"subdevice"`
	Outbox     OutboxConfig     `yaml:"outbox" json:"outbox"`
	OTA        OTAConfig        `yaml:"ota" json:"ota"`
	Admin      AdminConfig      `yaml:"admin" json:"admin"`
	Store      StoreConfig      `yaml:"store" json:"store"`
	Log        LogConfig        `yaml:"log" json:"log"`
}

// GatewayConfig holds process-wide settings.
type GatewayConfig struct {
	// ShutdownTimeout bounds a graceful stop.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" json:"shutdown_timeout"`
}

// NorthboundConfig is the MQTT session to IoTDA.
type NorthboundConfig struct {
	// Server is tcp://host:1883 or ssl://host:8883. With BootstrapServer
	// set it may be empty: the provisioning service names it.
	Server string `yaml:"server" json:"server"`
	// BootstrapServer is the device provisioning endpoint
	// (ssl://iot-bs.<region>...:8883, iotda-protocol §5.6). When set, the
	// gateway asks it for its access address once and keeps the answer in
	// the store.
	BootstrapServer string `yaml:"bootstrap_server" json:"bootstrap_server"`
	// BootstrapKeyword selects a static provisioning policy.
	BootstrapKeyword string `yaml:"bootstrap_keyword" json:"bootstrap_keyword"`
	// BootstrapCAFile verifies the provisioning endpoint (default ca_file).
	BootstrapCAFile string `yaml:"bootstrap_ca_file" json:"bootstrap_ca_file"`
	// CustomTopics maps device message names to custom topics, each
	// "name=up|down|both:topic" (topic "user/x" means
	// $oc/devices/{gateway}/user/x; "{gateway_id}" is replaced).
	CustomTopics []string `yaml:"custom_topics" json:"custom_topics"`
	// DeviceID is the gateway's device id on the platform.
	DeviceID string `yaml:"device_id" json:"device_id"`
	// Secret is the gateway's device secret (or use SecretFile).
	Secret Secret `yaml:"secret" json:"secret"`
	// SecretFile holds the secret; it wins over Secret.
	SecretFile string `yaml:"secret_file" json:"secret_file"`
	// CAFile verifies the server; empty means the system roots.
	CAFile string `yaml:"ca_file" json:"ca_file"`
	// ServerName overrides the host name checked in the server certificate.
	ServerName string `yaml:"server_name" json:"server_name"`
	// InsecureSkipVerify turns server verification off (logged loudly).
	InsecureSkipVerify bool `yaml:"insecure_skip_verify" json:"insecure_skip_verify"`
	// CertFile and KeyFile select X.509 login (iotda-protocol §1.3).
	CertFile string `yaml:"cert_file" json:"cert_file"`
	KeyFile  string `yaml:"key_file" json:"key_file"`
	// CheckTimestamp is the signType of the client id, 0 or 1 (§1.2).
	CheckTimestamp int           `yaml:"check_timestamp" json:"check_timestamp"`
	KeepAlive      time.Duration `yaml:"keepalive" json:"keepalive"`
	ConnectTimeout time.Duration `yaml:"connect_timeout" json:"connect_timeout"`
	MinBackoff     time.Duration `yaml:"min_backoff" json:"min_backoff"`
	MaxBackoff     time.Duration `yaml:"max_backoff" json:"max_backoff"`
	// MaxMsgsPerSec is the upstream publish cap (IoTDA: 50/s, §7).
	MaxMsgsPerSec float64 `yaml:"max_msgs_per_sec" json:"max_msgs_per_sec"`
	// QuotaMargin stretches the one-second quota window (0.02 = 2 %) to
	// absorb jitter between the gateway and the platform's count.
	QuotaMargin float64 `yaml:"quota_margin" json:"quota_margin"`
	// MaxBytesPerSec caps upstream bytes (0 = off).
	MaxBytesPerSec int64 `yaml:"max_bytes_per_sec" json:"max_bytes_per_sec"`
	// Inflight bounds publishes awaiting their PUBACK.
	Inflight int `yaml:"inflight" json:"inflight"`
	// MaxPublishBytes bounds one publish (the platform refuses > 1 MB).
	MaxPublishBytes int `yaml:"max_publish_bytes" json:"max_publish_bytes"`
	// DownlinkQueue bounds downlink messages waiting for dispatch.
	DownlinkQueue int `yaml:"downlink_queue" json:"downlink_queue"`
	// BatchLinger holds property reports up to this long while a batch
	// report is not full, so the quota carries full batches (0 = off).
	BatchLinger time.Duration `yaml:"batch_linger" json:"batch_linger"`
	// Coalesce keeps only the latest value per device and service when a
	// backlog is replayed (lossy by design; off by default).
	Coalesce bool `yaml:"coalesce" json:"coalesce"`
}

// SouthboundConfig is the device-facing TCP server.
type SouthboundConfig struct {
	Listen        string        `yaml:"listen" json:"listen"`
	TLSListen     string        `yaml:"tls_listen" json:"tls_listen"`
	TLSCertFile   string        `yaml:"tls_cert_file" json:"tls_cert_file"`
	TLSKeyFile    string        `yaml:"tls_key_file" json:"tls_key_file"`
	ClientCAFile  string        `yaml:"client_ca_file" json:"client_ca_file"`
	Codec         string        `yaml:"codec" json:"codec"`
	Auth          string        `yaml:"auth" json:"auth"`
	AllowList     []string      `yaml:"allow_list" json:"allow_list"`
	Loops         int           `yaml:"loops" json:"loops"`
	Workers       int           `yaml:"workers" json:"workers"`
	WorkerQueue   int           `yaml:"worker_queue" json:"worker_queue"`
	MaxConns      int           `yaml:"max_conns" json:"max_conns"`
	MaxConnsPerIP int           `yaml:"max_conns_per_ip" json:"max_conns_per_ip"`
	MaxFrame      int           `yaml:"max_frame" json:"max_frame"`
	HelloTimeout  time.Duration `yaml:"hello_timeout" json:"hello_timeout"`
	IdleTimeout   time.Duration `yaml:"idle_timeout" json:"idle_timeout"`
	RatePerSec    float64       `yaml:"rate_per_sec" json:"rate_per_sec"`
	RateBurst     int           `yaml:"rate_burst" json:"rate_burst"`
	// RateStrikes is how many rate-limited frames in a row close a device.
	RateStrikes int `yaml:"rate_strikes" json:"rate_strikes"`
	// TLSWriteTimeout bounds one write to a TLS device.
	TLSWriteTimeout time.Duration `yaml:"tls_write_timeout" json:"tls_write_timeout"`
	MaxOutbound     int           `yaml:"max_outbound" json:"max_outbound"`
	SecondLogin     string        `yaml:"second_login" json:"second_login"`
	MaxBadFrames    int           `yaml:"max_bad_frames" json:"max_bad_frames"`
}

// SubdeviceConfig governs sub-device records and downlink requests.
type SubdeviceConfig struct {
	// DefaultProductID is used to register a device that names none.
	DefaultProductID string `yaml:"default_product_id" json:"default_product_id"`
	// AutoRegister sends an add request for unknown devices.
	AutoRegister bool `yaml:"auto_register" json:"auto_register"`
	// AllowedProducts, when set, limits the product ids of auto-registration.
	AllowedProducts []string `yaml:"allowed_products" json:"allowed_products"`
	// StatusDebounce collects status changes before reporting them.
	StatusDebounce time.Duration `yaml:"status_debounce" json:"status_debounce"`
	// StatusRate paces status entries per second (the platform allows
	// 150/s per purchased unit, iotda §3.3).
	StatusRate float64 `yaml:"status_rate" json:"status_rate"`
	// StartupGrace delays the OFFLINE re-report of devices that have not
	// reconnected after a gateway start, so a reconnect storm ends in as
	// few status messages as possible.
	StartupGrace time.Duration `yaml:"startup_grace" json:"startup_grace"`
	// CommandTimeout bounds the wait for a device's command answer (§2.6).
	CommandTimeout time.Duration `yaml:"command_timeout" json:"command_timeout"`
	// PropertyTimeout bounds the wait for property set/get answers.
	PropertyTimeout time.Duration `yaml:"property_timeout" json:"property_timeout"`
	// PropertyGetFromCache answers property get from the last report when
	// the device cannot (demo codec) or does not answer in time.
	PropertyGetFromCache bool `yaml:"property_get_from_cache" json:"property_get_from_cache"`
	// MaxPending bounds downlink requests waiting for device answers.
	MaxPending int `yaml:"max_pending" json:"max_pending"`
	// ResyncInterval repeats the sync request and status report (0 = only on connect).
	ResyncInterval time.Duration `yaml:"resync_interval" json:"resync_interval"`
}

// OutboxConfig bounds the durable uplink queue.
type OutboxConfig struct {
	MaxBytes int64 `yaml:"max_bytes" json:"max_bytes"`
	// Overflow is "reject" (devices get a busy error) or "drop-oldest".
	Overflow string `yaml:"overflow" json:"overflow"`
}

// OTAConfig governs sub-device firmware upgrades (iotda-protocol §4).
type OTAConfig struct {
	// MaxConcurrent bounds devices being upgraded at once.
	MaxConcurrent int `yaml:"max_concurrent" json:"max_concurrent"`
	// CacheDir holds downloaded packages by SHA-256 (default <store.dir>/ota).
	CacheDir string `yaml:"cache_dir" json:"cache_dir"`
	// CacheMaxBytes bounds the package cache.
	CacheMaxBytes int64 `yaml:"cache_max_bytes" json:"cache_max_bytes"`
	// CAFile adds a CA for package downloads (system roots are always used).
	CAFile string `yaml:"ca_file" json:"ca_file"`
	// DownloadTimeout bounds one package download.
	DownloadTimeout time.Duration `yaml:"download_timeout" json:"download_timeout"`
	// ChunkSize is the bytes per chunk pushed to a device.
	ChunkSize int `yaml:"chunk_size" json:"chunk_size"`
	// Window is the chunks in flight before the device's acknowledgement.
	Window int `yaml:"window" json:"window"`
	// AckTimeout bounds the wait for a device's chunk acknowledgement.
	AckTimeout time.Duration `yaml:"ack_timeout" json:"ack_timeout"`
	// ApplyTimeout bounds the wait for the device's final result.
	ApplyTimeout time.Duration `yaml:"apply_timeout" json:"apply_timeout"`
	// MaxAttempts bounds retries of a job before it fails.
	MaxAttempts int `yaml:"max_attempts" json:"max_attempts"`
	// ProgressInterval throttles upgrade_progress_report per job.
	ProgressInterval time.Duration `yaml:"progress_interval" json:"progress_interval"`
	// RetryBackoff is the wait before a failed attempt is retried; it
	// doubles per attempt, up to 32 times this value.
	RetryBackoff time.Duration `yaml:"retry_backoff" json:"retry_backoff"`
	// DownloadWorkers is the fixed number of concurrent package downloads.
	DownloadWorkers int `yaml:"download_workers" json:"download_workers"`
	// MaxJobs bounds unfinished jobs; upgrades beyond it fail at once.
	MaxJobs int `yaml:"max_jobs" json:"max_jobs"`
	// KeepFinished is how many finished jobs are kept for the admin API.
	KeepFinished int `yaml:"keep_finished" json:"keep_finished"`
	// Queue bounds each inbound queue of the OTA manager (platform events,
	// device frames, connection changes).
	Queue int `yaml:"queue" json:"queue"`
}

// AdminConfig is the admin HTTP endpoint.
type AdminConfig struct {
	Listen string `yaml:"listen" json:"listen"`
	// TokenFile holds the bearer token; required when Listen is not loopback.
	TokenFile string `yaml:"token_file" json:"token_file"`
	Pprof     bool   `yaml:"pprof" json:"pprof"`
}

// StoreConfig is the bbolt store.
type StoreConfig struct {
	Dir            string        `yaml:"dir" json:"dir"`
	CommitInterval time.Duration `yaml:"commit_interval" json:"commit_interval"`
	// NoSync skips fsync (tests and benchmarks only; unsafe).
	NoSync bool `yaml:"no_sync" json:"no_sync"`
}

// LogConfig is the process log.
type LogConfig struct {
	Level  string `yaml:"level" json:"level"`
	Format string `yaml:"format" json:"format"`
}

// DefaultConfig returns the defaults every loaded file starts from.
func DefaultConfig() Config {
	return Config{
		Gateway: GatewayConfig{ShutdownTimeout: 30 * time.Second},
		Northbound: NorthboundConfig{
			KeepAlive:       120 * time.Second,
			ConnectTimeout:  10 * time.Second,
			MinBackoff:      time.Second,
			MaxBackoff:      30 * time.Second,
			MaxMsgsPerSec:   50,
			QuotaMargin:     DefaultQuotaMargin,
			Inflight:        32,
			MaxPublishBytes: 1 << 20,
			DownlinkQueue:   4096,
			BatchLinger:     200 * time.Millisecond,
		},
		Southbound: SouthboundConfig{
			Listen:          ":8081",
			Codec:           "jsonl",
			Auth:            "open",
			MaxConns:        100000,
			MaxFrame:        64 << 10,
			HelloTimeout:    10 * time.Second,
			IdleTimeout:     300 * time.Second,
			MaxOutbound:     256 << 10,
			SecondLogin:     "kick-old",
			MaxBadFrames:    5,
			RateStrikes:     20,
			TLSWriteTimeout: 30 * time.Second,
		},
		Subdevice: SubdeviceConfig{
			AutoRegister:    true,
			StatusDebounce:  time.Second,
			StatusRate:      150,
			StartupGrace:    10 * time.Second,
			CommandTimeout:  20 * time.Second,
			PropertyTimeout: 20 * time.Second,
			MaxPending:      100000,
			ResyncInterval:  time.Hour,
		},
		Outbox: OutboxConfig{MaxBytes: 256 << 20, Overflow: "reject"},
		OTA: OTAConfig{
			MaxConcurrent:    64,
			CacheMaxBytes:    1 << 30,
			DownloadTimeout:  10 * time.Minute,
			ChunkSize:        16 << 10,
			Window:           4,
			AckTimeout:       30 * time.Second,
			ApplyTimeout:     5 * time.Minute,
			MaxAttempts:      3,
			ProgressInterval: 5 * time.Second,
			RetryBackoff:     10 * time.Second,
			DownloadWorkers:  2,
			MaxJobs:          100000,
			KeepFinished:     10000,
			Queue:            4096,
		},
		Admin: AdminConfig{Listen: "127.0.0.1:9100"},
		Store: StoreConfig{Dir: "./data", CommitInterval: 2 * time.Millisecond},
		Log:   LogConfig{Level: "info", Format: "text"},
	}
}

// LoadConfig reads the YAML file at path (none when path is ""), applies
// SUBGATE_* environment overrides from env (os.Environ form), and
// validates. Unknown keys and bad values fail with the key's name.
func LoadConfig(path string, env []string) (Config, error) {
	cfg := DefaultConfig()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		if err := decodeYAML(data, &cfg); err != nil {
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := applyEnv(&cfg, env); err != nil {
		return cfg, err
	}
	if cfg.Northbound.SecretFile != "" {
		b, err := os.ReadFile(cfg.Northbound.SecretFile)
		if err != nil {
			return cfg, fmt.Errorf("northbound.secret_file: %w", err)
		}
		cfg.Northbound.Secret = Secret(strings.TrimSpace(string(b)))
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// decodeYAML decodes section by section and key by key so that every
// error names its key.
func decodeYAML(data []byte, cfg *Config) error {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return err
	}
	if len(root.Content) == 0 {
		return nil // empty file
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: the file must be a mapping of sections", doc.Line)
	}
	cv := reflect.ValueOf(cfg).Elem()
	for i := 0; i+1 < len(doc.Content); i += 2 {
		secName, secNode := doc.Content[i].Value, doc.Content[i+1]
		sec, ok := fieldByTag(cv, secName)
		if !ok {
			return fmt.Errorf("line %d: unknown section %q", doc.Content[i].Line, secName)
		}
		if secNode.Kind == yaml.ScalarNode && secNode.Tag == "!!null" {
			continue
		}
		if secNode.Kind != yaml.MappingNode {
			return fmt.Errorf("line %d: %s: must be a mapping", secNode.Line, secName)
		}
		for j := 0; j+1 < len(secNode.Content); j += 2 {
			key, val := secNode.Content[j].Value, secNode.Content[j+1]
			f, ok := fieldByTag(sec, key)
			if !ok {
				return fmt.Errorf("line %d: %s.%s: unknown key", secNode.Content[j].Line, secName, key)
			}
			if err := decodeValue(val, f); err != nil {
				return fmt.Errorf("line %d: %s.%s: %v", val.Line, secName, key, err)
			}
		}
	}
	return nil
}

var durationType = reflect.TypeFor[time.Duration]()

func decodeValue(n *yaml.Node, f reflect.Value) error {
	if f.Type() == durationType || f.Kind() == reflect.Bool || f.Kind() == reflect.String {
		if n.Kind != yaml.ScalarNode {
			return errors.New("must be a single value")
		}
		return setFromString(f, n.Value)
	}
	if f.Kind() == reflect.Slice && n.Kind == yaml.ScalarNode {
		return setFromString(f, n.Value)
	}
	if err := n.Decode(f.Addr().Interface()); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			return errors.New(te.Errors[0])
		}
		return err
	}
	return nil
}

func fieldByTag(v reflect.Value, tag string) (reflect.Value, bool) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name == tag {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// setFromString parses s into f by f's type.
func setFromString(f reflect.Value, s string) error {
	switch {
	case f.Type() == durationType:
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("%q is not a duration like 10s or 1m30s", s)
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(s)
	case f.Kind() == reflect.Bool:
		switch strings.ToLower(strings.TrimSpace(s)) {
		case "1", "true", "yes", "on":
			f.SetBool(true)
		case "0", "false", "no", "off", "":
			f.SetBool(false)
		default:
			return fmt.Errorf("%q is not a boolean (true/false/1/0)", s)
		}
	case f.CanInt():
		i, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil || f.OverflowInt(i) {
			return fmt.Errorf("%q is not an integer", s)
		}
		f.SetInt(i)
	case f.CanFloat():
		x, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
		f.SetFloat(x)
	case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
		var out []string
		for p := range strings.SplitSeq(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
		f.Set(reflect.ValueOf(out))
	default:
		return fmt.Errorf("unsupported type %s", f.Type())
	}
	return nil
}

// EnvPrefix starts every environment override.
const EnvPrefix = "SUBGATE_"

// applyEnv applies SUBGATE_<SECTION>_<KEY> variables. An unknown
// SUBGATE_ variable is an error, so that a typo does not go unnoticed.
func applyEnv(cfg *Config, env []string) error {
	known := map[string]reflect.Value{}
	cv := reflect.ValueOf(cfg).Elem()
	ct := cv.Type()
	for i := 0; i < ct.NumField(); i++ {
		sec, _, _ := strings.Cut(ct.Field(i).Tag.Get("yaml"), ",")
		sv := cv.Field(i)
		for j := 0; j < sv.NumField(); j++ {
			key, _, _ := strings.Cut(sv.Type().Field(j).Tag.Get("yaml"), ",")
			known[strings.ToUpper(EnvPrefix+sec+"_"+key)] = sv.Field(j)
		}
	}
	for _, kv := range env {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		if isNonConfigEnv(name) {
			continue
		}
		f, ok := known[name]
		if !ok {
			return fmt.Errorf("environment %s: unknown setting (expected SUBGATE_<SECTION>_<KEY>)", name)
		}
		if err := setFromString(f, val); err != nil {
			return fmt.Errorf("environment %s: %v", name, err)
		}
	}
	return nil
}

// isNonConfigEnv lists SUBGATE_ variables that are not config keys: the
// CLI's admin address. (SUBGATE_ADMIN_TOKEN_FILE is admin.token_file for
// both the daemon and the CLI.)
func isNonConfigEnv(name string) bool {
	return name == "SUBGATE_ADMIN_ADDR"
}

// Validate checks every section; errors name the key.
func (c *Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Gateway.ShutdownTimeout <= 0 {
		add("gateway.shutdown_timeout", "must be positive")
	}
	nb := c.Northbound
	if nb.Server == "" && nb.BootstrapServer == "" {
		add("northbound.server", "required (tcp://host:1883 or ssl://host:8883, or northbound.bootstrap_server); or run with -dev")
	}
	for key, v := range map[string]string{"northbound.server": nb.Server, "northbound.bootstrap_server": nb.BootstrapServer} {
		if u, err := url.Parse(v); v != "" && (err != nil || (u.Scheme != "tcp" && u.Scheme != "ssl") || u.Host == "") {
			add(key, "%q is not tcp://host:port or ssl://host:port", v)
		}
	}
	if _, err := parseCustomTopics(nb.CustomTopics, "gw"); err != nil {
		add("northbound.custom_topics", "%v", err)
	}
	if nb.DeviceID == "" {
		add("northbound.device_id", "required")
	} else if err := subdevice.ValidateDeviceID(nb.DeviceID); err != nil {
		add("northbound.device_id", "%v", err)
	}
	if nb.Secret == "" && nb.CertFile == "" {
		add("northbound.secret", "required (or northbound.secret_file, or northbound.cert_file for X.509)")
	}
	if nb.CheckTimestamp != 0 && nb.CheckTimestamp != 1 {
		add("northbound.check_timestamp", "%d is not 0 or 1", nb.CheckTimestamp)
	}
	if nb.KeepAlive < 30*time.Second || nb.KeepAlive > 1200*time.Second {
		add("northbound.keepalive", "%s is outside 30s..1200s (iotda-protocol §1.4)", nb.KeepAlive)
	}
	if nb.MinBackoff <= 0 || nb.MaxBackoff < nb.MinBackoff {
		add("northbound.min_backoff", "need 0 < min_backoff <= max_backoff")
	}
	if nb.MaxMsgsPerSec <= 0 {
		add("northbound.max_msgs_per_sec", "must be positive")
	}
	if nb.QuotaMargin < 0 || nb.QuotaMargin > 1 {
		add("northbound.quota_margin", "must be 0..1 (a fraction of the one-second window)")
	}
	if nb.MaxBytesPerSec < 0 {
		add("northbound.max_bytes_per_sec", "must not be negative")
	}
	if nb.Inflight < 1 || nb.Inflight > 65535 {
		add("northbound.inflight", "must be 1..65535")
	}
	if nb.MaxPublishBytes < 4096 || nb.MaxPublishBytes > 1<<20 {
		add("northbound.max_publish_bytes", "must be 4096..1048576 (the platform refuses > 1 MB)")
	}
	if nb.BatchLinger < 0 || nb.BatchLinger > 10*time.Second {
		add("northbound.batch_linger", "must be 0s..10s")
	}
	if nb.DownlinkQueue < 1 {
		add("northbound.downlink_queue", "must be positive")
	}
	sb := c.Southbound
	if _, _, err := net.SplitHostPort(sb.Listen); err != nil {
		add("southbound.listen", "%q is not host:port", sb.Listen)
	}
	if !slices.Contains([]string{"demo", "jsonl", "binary"}, sb.Codec) {
		add("southbound.codec", "%q is not demo, jsonl or binary", sb.Codec)
	}
	if !slices.Contains([]string{"open", "token", "mtls"}, sb.Auth) {
		add("southbound.auth", "%q is not open, token or mtls", sb.Auth)
	}
	if sb.Auth == "token" && sb.Codec == "demo" {
		add("southbound.auth", "token needs a native codec (jsonl or binary): the demo protocol has no hello")
	}
	if sb.Auth == "mtls" && (sb.TLSListen == "" || sb.TLSCertFile == "" || sb.TLSKeyFile == "" || sb.ClientCAFile == "") {
		add("southbound.auth", "mtls needs southbound.tls_listen, tls_cert_file, tls_key_file and client_ca_file")
	}
	if sb.SecondLogin != "kick-old" && sb.SecondLogin != "reject-new" {
		add("southbound.second_login", "%q is not kick-old or reject-new", sb.SecondLogin)
	}
	if sb.MaxConns < 1 {
		add("southbound.max_conns", "must be positive")
	}
	if sb.MaxFrame < 256 || sb.MaxFrame > 16<<20 {
		add("southbound.max_frame", "must be 256..16777216 bytes")
	}
	if sb.RateStrikes < 1 || sb.TLSWriteTimeout <= 0 {
		add("southbound.rate_strikes", "rate_strikes and tls_write_timeout must be positive")
	}
	if sb.HelloTimeout <= 0 || sb.IdleTimeout <= 0 {
		add("southbound.hello_timeout", "hello_timeout and idle_timeout must be positive")
	}
	for _, id := range sb.AllowList {
		if id == "" {
			add("southbound.allow_list", "empty entry")
		}
	}
	sd := c.Subdevice
	if sd.DefaultProductID != "" {
		if err := subdevice.ValidateProductID(sd.DefaultProductID); err != nil {
			add("subdevice.default_product_id", "%v", err)
		}
	}
	for _, p := range sd.AllowedProducts {
		if err := subdevice.ValidateProductID(p); err != nil {
			add("subdevice.allowed_products", "%v", err)
		}
	}
	if sd.StatusDebounce < 0 || sd.StartupGrace < 0 {
		add("subdevice.status_debounce", "status_debounce and startup_grace must not be negative")
	}
	if sd.StatusRate < 1 {
		add("subdevice.status_rate", "must be at least 1 entry per second")
	}
	if sd.CommandTimeout <= 0 || sd.PropertyTimeout <= 0 {
		add("subdevice.command_timeout", "command_timeout and property_timeout must be positive")
	}
	if sd.MaxPending < 1 {
		add("subdevice.max_pending", "must be positive")
	}
	if sd.ResyncInterval < 0 {
		add("subdevice.resync_interval", "must not be negative")
	}
	o := c.OTA
	if o.MaxConcurrent < 1 || o.Window < 1 || o.MaxAttempts < 1 {
		add("ota.max_concurrent", "max_concurrent, window and max_attempts must be positive")
	}
	if o.ChunkSize < 256 || o.ChunkSize > c.Southbound.MaxFrame-1024 {
		add("ota.chunk_size", "must be 256..southbound.max_frame-1024 (%d)", c.Southbound.MaxFrame-1024)
	}
	if o.CacheMaxBytes < 1<<20 {
		add("ota.cache_max_bytes", "must be at least 1048576")
	}
	if o.DownloadTimeout <= 0 || o.AckTimeout <= 0 || o.ApplyTimeout <= 0 || o.ProgressInterval < 0 {
		add("ota.download_timeout", "download_timeout, ack_timeout and apply_timeout must be positive")
	}
	if o.RetryBackoff <= 0 {
		add("ota.retry_backoff", "must be positive")
	}
	if o.DownloadWorkers < 1 || o.DownloadWorkers > 64 {
		add("ota.download_workers", "must be 1..64")
	}
	if o.MaxJobs < 1 || o.KeepFinished < 0 {
		add("ota.max_jobs", "max_jobs must be positive and keep_finished not negative")
	}
	if o.Queue < 16 {
		add("ota.queue", "must be at least 16")
	}
	if c.Outbox.MaxBytes < 1<<20 {
		add("outbox.max_bytes", "must be at least 1048576")
	}
	if c.Outbox.Overflow != "reject" && c.Outbox.Overflow != "drop-oldest" {
		add("outbox.overflow", "%q is not reject or drop-oldest", c.Outbox.Overflow)
	}
	if _, _, err := net.SplitHostPort(c.Admin.Listen); c.Admin.Listen != "" && err != nil {
		add("admin.listen", "%q is not host:port", c.Admin.Listen)
	}
	if c.Store.Dir == "" {
		add("store.dir", "required")
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		add("log.level", "%v", err)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		add("log.format", "%q is not text or json", c.Log.Format)
	}
	return errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}

// NewLogger builds the process logger from the log section.
func (c LogConfig) NewLogger(w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.Level)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Redacted returns the config as YAML with every secret replaced.
func (c Config) Redacted() ([]byte, error) {
	return yaml.Marshal(c)
}
