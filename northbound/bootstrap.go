package northbound

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/subgate/subgate/northbound/iotda"
)

// ErrBootstrapRefused means the provisioning service answered with an
// error (no matching policy, a failing custom policy, ...).
var ErrBootstrapRefused = errors.New("northbound: bootstrap refused")

// BootstrapResult is the provisioning service's answer (iotda-protocol
// §5.6).
type BootstrapResult struct {
	// Address is the access address, host:port.
	Address string `json:"address"`
	// InitConfig is the optional initial configuration (a JSON string).
	InitConfig string `json:"initConfig,omitempty"`
	// DeviceSecret is set when registration-group secrets are used.
	DeviceSecret string `json:"deviceSecret,omitempty"`
	ErrorCode    string `json:"errorCode,omitempty"`
	ErrorMsg     string `json:"errorMsg,omitempty"`
}

// Bootstrap connects once to the provisioning service at cfg.Server with
// the gateway's credentials, asks for its access address and returns the
// answer (iotda-protocol §5.6). keyword, when set, selects a static policy
// ({"baseStrategyKeyword": keyword}). It waits at most timeout for the
// answer. The connection is closed before it returns.
func Bootstrap(ctx context.Context, cfg Config, keyword string, timeout time.Duration, log *slog.Logger) (BootstrapResult, error) {
	cfg.Subscriptions = []string{iotda.TopicBootstrapDown(cfg.DeviceID)}
	cfg.OnUp, cfg.OnDown = nil, nil
	s, err := New(cfg, log, nil)
	if err != nil {
		return BootstrapResult{}, err
	}
	client, err := s.connect(ctx)
	if err != nil {
		return BootstrapResult{}, err
	}
	defer client.Disconnect(250)
	s.mu.Lock()
	s.client = client
	s.mu.Unlock()
	s.connected.Store(true)

	payload := []byte("{}")
	if keyword != "" {
		payload, _ = json.Marshal(map[string]string{"baseStrategyKeyword": keyword})
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.Publish(tctx, "bootstrap", iotda.TopicBootstrapUp(cfg.DeviceID), payload); err != nil {
		return BootstrapResult{}, fmt.Errorf("northbound: bootstrap request: %w", err)
	}
	for {
		select {
		case <-tctx.Done():
			return BootstrapResult{}, fmt.Errorf("northbound: no bootstrap answer within %s", timeout)
		case m := <-s.msgs:
			if m.Topic != iotda.TopicBootstrapDown(cfg.DeviceID) {
				continue
			}
			var r BootstrapResult
			if err := json.Unmarshal(m.Payload, &r); err != nil {
				return r, fmt.Errorf("northbound: bad bootstrap answer: %w", err)
			}
			if r.ErrorCode != "" {
				return r, fmt.Errorf("%w: %s %s", ErrBootstrapRefused, r.ErrorCode, r.ErrorMsg)
			}
			if _, _, err := net.SplitHostPort(r.Address); err != nil {
				return r, fmt.Errorf("northbound: bootstrap answer has no host:port address: %q", r.Address)
			}
			return r, nil
		}
	}
}
