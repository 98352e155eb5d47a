package gateway

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/subgate/subgate/northbound"
	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/southbound/frame"
)

// customTopic maps a device message name to a custom topic
// (iotda-protocol §2.1: $oc/devices/{id}/user/{name} topics and policy
// topics), in one or both directions.
type customTopic struct {
	name  string
	topic string
	up    bool
	down  bool
}

type customTopics struct {
	byName  map[string]customTopic
	byTopic map[string]customTopic
}

var (
	customNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	userNameRE   = regexp.MustCompile(`^[A-Za-z0-9_/]{1,64}$`)
)

// parseCustomTopics parses northbound.custom_topics entries
// "name=up|down|both:topic" for gateway gw.
func parseCustomTopics(entries []string, gw string) (customTopics, error) {
	ct := customTopics{byName: map[string]customTopic{}, byTopic: map[string]customTopic{}}
	for _, e := range entries {
		name, rest, ok := strings.Cut(e, "=")
		dir, topic, ok2 := strings.Cut(rest, ":")
		if !ok || !ok2 || !customNameRE.MatchString(name) {
			return ct, fmt.Errorf("%q is not name=up|down|both:topic (name of [A-Za-z0-9_-])", e)
		}
		t := customTopic{name: name}
		switch dir {
		case "up":
			t.up = true
		case "down":
			t.down = true
		case "both":
			t.up, t.down = true, true
		default:
			return ct, fmt.Errorf("%q: direction %q is not up, down or both", e, dir)
		}
		topic = strings.ReplaceAll(topic, "{gateway_id}", gw)
		if user, ok := strings.CutPrefix(topic, "user/"); ok {
			if !userNameRE.MatchString(user) || strings.Contains(user, "//") {
				return ct, fmt.Errorf("%q: user topic name must be 1-64 of [A-Za-z0-9_/] without // (iotda §2.1)", e)
			}
			topic = iotda.TopicPrefix + gw + "/user/" + user
		}
		if topic == "" || len(topic) > 128 || strings.ContainsAny(topic, "+#") {
			return ct, fmt.Errorf("%q: topic must be 1-128 bytes without wildcards (iotda §7)", e)
		}
		if strings.HasPrefix(topic, iotda.TopicPrefix) && !strings.HasPrefix(topic, iotda.TopicPrefix+gw+"/user/") {
			return ct, fmt.Errorf("%q: a $oc topic must be the gateway's own user topic", e)
		}
		if _, dup := ct.byName[name]; dup {
			return ct, fmt.Errorf("%q: name %q used twice", e, name)
		}
		ct.byName[name] = t
		t.topic = topic
		ct.byName[name] = t
		ct.byTopic[topic] = t
	}
	return ct, nil
}

// downTopics lists the topics to subscribe to.
func (ct customTopics) downTopics() []string {
	var out []string
	for topic, t := range ct.byTopic {
		if t.down {
			out = append(out, topic)
		}
	}
	return out
}

// customDown routes a message on a custom topic to its sub-device. The
// platform's way of addressing a sub-device on a custom topic is not
// documented (iotda Appendix B 13): subgate expects the system-format
// envelope with object_device_id (decisions D18).
func (g *Gateway) customDown(t customTopic, m northbound.Message) {
	msg, system := iotda.ParseMessageDown(m.Payload)
	if !system || msg.ObjectDeviceID == "" {
		g.m.downlink.WithLabelValues("custom", "no_target").Inc()
		g.log.Info("custom topic message without object_device_id dropped", "component", "gateway", "topic", m.Topic)
		return
	}
	c, ok := g.connByDevice(msg.ObjectDeviceID)
	if !ok {
		g.m.downlink.WithLabelValues("custom", "offline").Inc()
		return
	}
	err := c.Send(frame.Frame{Type: frame.TypeMessage, Name: t.name, Content: msg.ContentBytes()})
	g.m.downlink.WithLabelValues("custom", resultLabel(err)).Inc()
}

// customUp wraps a device message for a custom topic in the system-format
// envelope so the platform side knows which sub-device sent it.
func customUpPayload(deviceID string, f frame.Frame) ([]byte, error) {
	var content json.RawMessage
	if len(f.Content) > 0 && f.Content[0] == '{' && json.Valid(f.Content) {
		content = f.Content
	} else {
		content, _ = json.Marshal(string(f.Content))
	}
	return json.Marshal(iotda.MessageUp{ObjectDeviceID: deviceID, Name: f.Name, Content: content})
}
