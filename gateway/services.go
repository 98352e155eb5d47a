package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/subgate/subgate/northbound"
	"github.com/subgate/subgate/northbound/iotda"
)

// deviceLog implements the $log service for the gateway itself
// (iotda-protocol §5.4): connect and connection-loss entries are reported
// while the platform's switch is on and before its end time. The switch
// starts on (as the Python SDK does) and follows log_config; the last
// setting is kept in the store so a restart does not forget an "off".
type deviceLog struct {
	// mu guards the following fields.
	mu      sync.Mutex
	on      bool
	end     time.Time // zero: no end
	lostAt  time.Time
	lostErr string
}

const logConfigKey = "log_config"

func (g *Gateway) loadLogConfig() {
	g.dlog.on = true
	b, ok, err := g.st.Meta(logConfigKey)
	if err != nil || !ok {
		return
	}
	var p iotda.LogConfigParas
	if json.Unmarshal(b, &p) == nil {
		g.applyLogConfig(p)
	}
}

func (g *Gateway) applyLogConfig(p iotda.LogConfigParas) {
	end, hasEnd := p.End()
	g.dlog.mu.Lock()
	g.dlog.on = p.Switch != "off"
	g.dlog.end = time.Time{}
	if hasEnd {
		g.dlog.end = end
	}
	g.dlog.mu.Unlock()
}

// logConfigEvent handles log_config from the platform.
func (g *Gateway) logConfigEvent(ev iotda.Event) {
	if ev.EventType != iotda.EventLogConfig {
		return
	}
	var p iotda.LogConfigParas
	if err := json.Unmarshal(ev.Paras, &p); err != nil || (p.Switch != "on" && p.Switch != "off") {
		g.log.Warn("bad log_config from the platform", "component", "gateway", "err", err)
		return
	}
	g.applyLogConfig(p)
	b, _ := json.Marshal(p)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := g.st.PutMeta(ctx, logConfigKey, b); err != nil {
		g.log.Warn("saving log_config failed", "component", "gateway", "err", err)
	}
	g.log.Info("platform log switch changed", "component", "gateway", "switch", p.Switch, "end_time", p.EndTime)
}

// logAllowed reports whether log_report may be sent now.
func (g *Gateway) logAllowed() bool {
	g.dlog.mu.Lock()
	defer g.dlog.mu.Unlock()
	return g.dlog.on && (g.dlog.end.IsZero() || g.now().UTC().Before(g.dlog.end))
}

// noteLoss remembers a connection loss for the next connect's log entry.
func (g *Gateway) noteLoss(err error) {
	g.dlog.mu.Lock()
	g.dlog.lostAt = g.now()
	g.dlog.lostErr = fmt.Sprint(err)
	g.dlog.mu.Unlock()
}

// logConnect reports the connect, and the loss before it, as $log entries.
func (g *Gateway) logConnect() {
	if !g.logAllowed() {
		return
	}
	g.dlog.mu.Lock()
	lostAt, lostErr := g.dlog.lostAt, g.dlog.lostErr
	g.dlog.lostAt = time.Time{}
	g.dlog.mu.Unlock()
	now := g.now()
	if !lostAt.IsZero() {
		g.publishEvent(ClassManagement, "log", "", iotda.ServiceLog, iotda.EventLogReport, iotda.LogReportParas{
			Timestamp: strconv.FormatInt(lostAt.UnixMilli(), 10), Type: iotda.LogDeviceStatus,
			Content: "connection lost: " + lostErr,
		})
	}
	g.publishEvent(ClassManagement, "log", "", iotda.ServiceLog, iotda.EventLogReport, iotda.LogReportParas{
		Timestamp: strconv.FormatInt(now.UnixMilli(), 10), Type: iotda.LogDeviceStatus,
		Content: "connect complete, the server is " + g.cfg.Northbound.Server,
	})
}

// bootstrapRecord is what the store keeps of a provisioning answer.
type bootstrapRecord struct {
	Server  string    `json:"server"`
	Address string    `json:"address"`
	At      time.Time `json:"at"`
}

const bootstrapKey = "bootstrap"

// bootstrap returns the access address: the stored answer of the
// configured provisioning service, or a new one asked for with backoff
// until ctx ends (iotda-protocol §5.6).
func (g *Gateway) bootstrap(ctx context.Context) (string, error) {
	nbc := g.cfg.Northbound
	if b, ok, err := g.st.Meta(bootstrapKey); err == nil && ok {
		var rec bootstrapRecord
		if json.Unmarshal(b, &rec) == nil && rec.Server == nbc.BootstrapServer && rec.Address != "" {
			g.log.Info("using the stored bootstrap answer", "component", "gateway", "address", rec.Address)
			return rec.Address, nil
		}
	}
	ca := nbc.BootstrapCAFile
	if ca == "" {
		ca = nbc.CAFile
	}
	cfg := northbound.Config{
		Server: nbc.BootstrapServer, DeviceID: nbc.DeviceID, Secret: nbc.Secret.Reveal(),
		CheckTimestamp: nbc.CheckTimestamp, CAFile: ca, InsecureSkipVerify: nbc.InsecureSkipVerify,
		CertFile: nbc.CertFile, KeyFile: nbc.KeyFile, KeepAlive: nbc.KeepAlive, ConnectTimeout: nbc.ConnectTimeout,
		Now: g.now,
	}
	wait := nbc.MinBackoff
	for {
		g.log.Info("asking the provisioning service for the access address", "component", "gateway",
			"server", nbc.BootstrapServer)
		res, err := northbound.Bootstrap(ctx, cfg, nbc.BootstrapKeyword, 30*time.Second, g.log)
		if err == nil {
			rec, _ := json.Marshal(bootstrapRecord{Server: nbc.BootstrapServer, Address: res.Address, At: g.now()})
			if perr := g.st.PutMeta(ctx, bootstrapKey, rec); perr != nil {
				g.log.Warn("saving the bootstrap answer failed", "component", "gateway", "err", perr)
			}
			g.log.Info("bootstrap answered", "component", "gateway", "address", res.Address)
			return res.Address, nil
		}
		g.log.Warn("bootstrap failed", "component", "gateway", "err", err, "retry_in", wait)
		if !sleepCtx(ctx, wait) {
			return "", ctx.Err()
		}
		wait = min(2*wait, nbc.MaxBackoff)
	}
}

// accessServer turns a provisioning answer's host:port into a server URL:
// port 1883 is plain MQTT and 8883 TLS (iotda-protocol §1.1); any other
// port keeps the provisioning endpoint's own scheme.
func accessServer(addr, bootstrapServer string) string {
	switch {
	case strings.HasSuffix(addr, ":1883"):
		return "tcp://" + addr
	case strings.HasSuffix(addr, ":8883"), !strings.HasPrefix(bootstrapServer, "tcp://"):
		return "ssl://" + addr
	default:
		return "tcp://" + addr
	}
}
