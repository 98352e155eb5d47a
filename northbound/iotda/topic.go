package iotda

import (
	"fmt"
	"strings"

	"github.com/subgate/subgate/subdevice"
)

// Kind says which system topic a topic is (iotda-protocol §2.0).
type Kind int

// Topic kinds. The down kinds are what a gateway receives; the up kinds are
// what the platform (the simulator) receives.
const (
	KindUnknown Kind = iota
	// Down.
	KindMessage        // sys/messages/down
	KindCommand        // sys/commands/request_id={rid}
	KindPropertySet    // sys/properties/set/request_id={rid}
	KindPropertyGet    // sys/properties/get/request_id={rid}
	KindShadowResponse // sys/shadow/get/response/request_id={rid}
	KindEvent          // sys/events/down
	KindBootstrap      // sys/bootstrap/down
	// Up.
	KindMessageUp           // sys/messages/up, optionally ?request_id={rid}
	KindPropertiesReport    // sys/properties/report
	KindBatchProperties     // sys/gateway/sub_devices/properties/report
	KindEventUp             // sys/events/up
	KindCommandResponse     // sys/commands/response/request_id={rid}
	KindPropertySetResponse // sys/properties/set/response/request_id={rid}
	KindPropertyGetResponse // sys/properties/get/response/request_id={rid}
	KindShadowGet           // sys/shadow/get/request_id={rid}
	KindBootstrapUp         // sys/bootstrap/up
)

var kindNames = [...]string{
	KindUnknown:             "unknown",
	KindMessage:             "message_down",
	KindCommand:             "command",
	KindPropertySet:         "property_set",
	KindPropertyGet:         "property_get",
	KindShadowResponse:      "shadow_response",
	KindEvent:               "event_down",
	KindBootstrap:           "bootstrap_down",
	KindMessageUp:           "message_up",
	KindPropertiesReport:    "properties_report",
	KindBatchProperties:     "batch_properties",
	KindEventUp:             "event_up",
	KindCommandResponse:     "command_response",
	KindPropertySetResponse: "property_set_response",
	KindPropertyGetResponse: "property_get_response",
	KindShadowGet:           "shadow_get",
	KindBootstrapUp:         "bootstrap_up",
}

// String returns a short lower-case name, stable for logs and metrics labels.
func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Up reports whether k is a topic a device publishes.
func (k Kind) Up() bool { return k >= KindMessageUp && k <= KindBootstrapUp }

// TopicPrefix starts every topic of a directly connected device.
const TopicPrefix = "$oc/devices/"

const (
	requestIDKey = "request_id="

	sfxMessagesUp        = "/sys/messages/up"
	sfxMessagesDown      = "/sys/messages/down"
	sfxPropertiesReport  = "/sys/properties/report"
	sfxBatchProperties   = "/sys/gateway/sub_devices/properties/report"
	sfxEventsUp          = "/sys/events/up"
	sfxEventsDown        = "/sys/events/down"
	sfxBootstrapUp       = "/sys/bootstrap/up"
	sfxBootstrapDown     = "/sys/bootstrap/down"
	sfxCommand           = "/sys/commands/"
	sfxCommandResponse   = "/sys/commands/response/"
	sfxPropSet           = "/sys/properties/set/"
	sfxPropSetResponse   = "/sys/properties/set/response/"
	sfxPropGet           = "/sys/properties/get/"
	sfxPropGetResponse   = "/sys/properties/get/response/"
	sfxShadowGet         = "/sys/shadow/get/"
	sfxShadowGetResponse = "/sys/shadow/get/response/"
)

func devTopic(gw, sfx string) string { return TopicPrefix + gw + sfx }

func ridTopic(gw, sfx, rid string) string { return TopicPrefix + gw + sfx + requestIDKey + rid }

// TopicMessagesUp is the free-form message topic, up (iotda-protocol §2.1).
func TopicMessagesUp(gw string) string { return devTopic(gw, sfxMessagesUp) }

// TopicMessagesDown is the free-form message topic, down (iotda-protocol §2.1).
func TopicMessagesDown(gw string) string { return devTopic(gw, sfxMessagesDown) }

// TopicPropertiesReport is the gateway's own property report (iotda-protocol §2.2).
func TopicPropertiesReport(gw string) string { return devTopic(gw, sfxPropertiesReport) }

// TopicBatchProperties is the sub-device batch property report (iotda-protocol §2.3).
func TopicBatchProperties(gw string) string { return devTopic(gw, sfxBatchProperties) }

// TopicEventsUp carries every upstream system event (iotda-protocol §2.8).
func TopicEventsUp(gw string) string { return devTopic(gw, sfxEventsUp) }

// TopicEventsDown carries every downstream system event (iotda-protocol §2.8).
func TopicEventsDown(gw string) string { return devTopic(gw, sfxEventsDown) }

// TopicCommand is the command request topic, down (iotda-protocol §2.6).
func TopicCommand(gw, requestID string) string { return ridTopic(gw, sfxCommand, requestID) }

// TopicCommandResponse is the command response topic, up (iotda-protocol §2.6).
func TopicCommandResponse(gw, requestID string) string {
	return ridTopic(gw, sfxCommandResponse, requestID)
}

// TopicPropertySet is the property set request topic, down (iotda-protocol §2.4).
func TopicPropertySet(gw, requestID string) string { return ridTopic(gw, sfxPropSet, requestID) }

// TopicPropertySetResponse is the property set response topic, up (iotda-protocol §2.4).
func TopicPropertySetResponse(gw, requestID string) string {
	return ridTopic(gw, sfxPropSetResponse, requestID)
}

// TopicPropertyGet is the property get request topic, down (iotda-protocol §2.5).
func TopicPropertyGet(gw, requestID string) string { return ridTopic(gw, sfxPropGet, requestID) }

// TopicPropertyGetResponse is the property get response topic, up (iotda-protocol §2.5).
func TopicPropertyGetResponse(gw, requestID string) string {
	return ridTopic(gw, sfxPropGetResponse, requestID)
}

// TopicShadowGet is the device-initiated shadow request, up (iotda-protocol §2.7).
func TopicShadowGet(gw, requestID string) string { return ridTopic(gw, sfxShadowGet, requestID) }

// TopicShadowResponse is the shadow answer, down (iotda-protocol §2.7).
func TopicShadowResponse(gw, requestID string) string {
	return ridTopic(gw, sfxShadowGetResponse, requestID)
}

// TopicBootstrapUp is the provisioning request (iotda-protocol §5.6).
func TopicBootstrapUp(gw string) string { return devTopic(gw, sfxBootstrapUp) }

// TopicBootstrapDown is the provisioning answer (iotda-protocol §5.6).
func TopicBootstrapDown(gw string) string { return devTopic(gw, sfxBootstrapDown) }

// Subscriptions returns the explicit subscriptions a gateway makes to get
// its downstream system topics at QoS 1; without them the platform delivers
// them at QoS 0 (iotda-protocol §1.6).
func Subscriptions(gw string) []string {
	return []string{
		devTopic(gw, sfxMessagesDown),
		devTopic(gw, "/sys/commands/#"),
		devTopic(gw, "/sys/properties/set/#"),
		devTopic(gw, "/sys/properties/get/#"),
		devTopic(gw, "/sys/shadow/get/response/#"),
		devTopic(gw, sfxEventsDown),
	}
}

// TopicDevice returns the device id of a $oc/devices/{id}/... topic, the
// owner a topic belongs to under the rule that a device uses only its own
// topics (iotda-protocol §1.6). ok is false for other topics, including
// non-$oc policy topics.
func TopicDevice(topic string) (deviceID string, ok bool) {
	rest, found := strings.CutPrefix(topic, TopicPrefix)
	if !found {
		return "", false
	}
	id, _, found := strings.Cut(rest, "/")
	if !found || id == "" {
		return "", false
	}
	return id, true
}

// ridKinds maps the request-id topic families, longest suffix first so that
// ".../set/response/request_id=" is not taken for ".../set/request_id=".
var ridKinds = []struct {
	sfx  string
	kind Kind
}{
	{sfxCommandResponse, KindCommandResponse},
	{sfxPropSetResponse, KindPropertySetResponse},
	{sfxPropGetResponse, KindPropertyGetResponse},
	{sfxShadowGetResponse, KindShadowResponse},
	{sfxCommand, KindCommand},
	{sfxPropSet, KindPropertySet},
	{sfxPropGet, KindPropertyGet},
	{sfxShadowGet, KindShadowGet},
}

var fixedKinds = map[string]Kind{
	sfxMessagesUp:       KindMessageUp,
	sfxMessagesDown:     KindMessage,
	sfxPropertiesReport: KindPropertiesReport,
	sfxBatchProperties:  KindBatchProperties,
	sfxEventsUp:         KindEventUp,
	sfxEventsDown:       KindEvent,
	sfxBootstrapUp:      KindBootstrapUp,
	sfxBootstrapDown:    KindBootstrap,
}

// ParseTopic parses a system topic exactly, not by substring
// (iotda-protocol §2.0, unlike the SDK routing of §2.9). The device id
// must be a valid device id; a request id, where the topic has one, must
// be non-empty, at most MaxRequestIDLen bytes and free of '/', '+', '#',
// '?', '&' and control bytes. A messages/up topic may carry the
// "?request_id={rid}" suffix of iotda-protocol §2.1, whose id is returned;
// no other query is accepted. Custom $oc/.../user/ and policy topics are
// not system topics and return ErrBadTopic.
func ParseTopic(topic string) (deviceID string, k Kind, requestID string, err error) {
	rest, ok := strings.CutPrefix(topic, TopicPrefix)
	if !ok {
		return "", KindUnknown, "", fmt.Errorf("%w: no %s prefix in %q", ErrBadTopic, TopicPrefix, clip(topic))
	}
	slash := strings.IndexByte(rest, '/')
	if slash < 0 {
		return "", KindUnknown, "", fmt.Errorf("%w: no device id in %q", ErrBadTopic, clip(topic))
	}
	deviceID, sfx := rest[:slash], rest[slash:]
	if verr := subdevice.ValidateDeviceID(deviceID); verr != nil {
		return "", KindUnknown, "", fmt.Errorf("%w: %w", ErrBadTopic, verr)
	}
	if q, query, hasQuery := strings.Cut(sfx, "?"); hasQuery {
		if q != sfxMessagesUp {
			return "", KindUnknown, "", fmt.Errorf("%w: query not allowed in %q", ErrBadTopic, clip(topic))
		}
		rid, found := strings.CutPrefix(query, requestIDKey)
		if !found {
			return "", KindUnknown, "", fmt.Errorf("%w: unknown query in %q", ErrBadTopic, clip(topic))
		}
		if verr := validRequestID(rid); verr != nil {
			return "", KindUnknown, "", verr
		}
		return deviceID, KindMessageUp, rid, nil
	}
	if kind, found := fixedKinds[sfx]; found {
		return deviceID, kind, "", nil
	}
	for _, rk := range ridKinds {
		tail, found := strings.CutPrefix(sfx, rk.sfx)
		if !found {
			continue
		}
		rid, found := strings.CutPrefix(tail, requestIDKey)
		if !found {
			break
		}
		if verr := validRequestID(rid); verr != nil {
			return "", KindUnknown, "", verr
		}
		return deviceID, rk.kind, rid, nil
	}
	return "", KindUnknown, "", fmt.Errorf("%w: unknown system topic %q", ErrBadTopic, clip(topic))
}

func validRequestID(rid string) error {
	if rid == "" || len(rid) > MaxRequestIDLen {
		return fmt.Errorf("%w: request id must be 1-%d bytes", ErrBadTopic, MaxRequestIDLen)
	}
	for i := 0; i < len(rid); i++ {
		switch c := rid[i]; {
		case c < 0x20 || c == 0x7f, c == '/', c == '+', c == '#', c == '?', c == '&':
			return fmt.Errorf("%w: bad byte %#x in request id", ErrBadTopic, c)
		}
	}
	return nil
}
