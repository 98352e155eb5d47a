package iotdasim

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/subgate/subgate/northbound/iotda"
)

// PublishCustom publishes payload on a custom topic of gateway gw: its own
// $oc/devices/{gw}/user/... topic or a policy topic (iotda-protocol §2.1),
// as the platform's rule engine or an application would.
func (s *Sim) PublishCustom(gw, topic string, payload []byte) error {
	if strings.HasPrefix(topic, iotda.TopicPrefix) && !strings.HasPrefix(topic, iotda.TopicPrefix+gw+"/user/") {
		return fmt.Errorf("iotdasim: %q is not a custom topic of %q", topic, gw)
	}
	if len(payload) > iotda.MaxPublishSize {
		return fmt.Errorf("iotdasim: message over %d bytes", iotda.MaxPublishSize)
	}
	s.mu.Lock()
	_, known := s.gateways[gw]
	s.mu.Unlock()
	if !known {
		return fmt.Errorf("iotdasim: unknown gateway %q", gw)
	}
	return s.publish(topic, bytes.Clone(payload))
}
