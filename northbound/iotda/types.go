package iotda

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/subgate/subgate/subdevice"
)

// Service is one service entry of a property report, property set or
// property get response (iotda-protocol §2.2–§2.5). Properties is a JSON
// object of property name to value.
type Service struct {
	ServiceID  string          `json:"service_id"`
	Properties json.RawMessage `json:"properties,omitempty"`
	EventTime  string          `json:"event_time,omitempty"`
}

// PropertiesReport is the payload of a gateway's own property report
// (iotda-protocol §2.2).
type PropertiesReport struct {
	Services []Service `json:"services"`
}

// DeviceServices is one sub-device of a batch property report. The key is
// device_id, not object_device_id (iotda-protocol §2.3).
type DeviceServices struct {
	DeviceID string    `json:"device_id"`
	Services []Service `json:"services"`
}

// BatchProperties is the batch property report of a gateway
// (iotda-protocol §2.3). It has no response.
type BatchProperties struct {
	Devices []DeviceServices `json:"devices"`
}

// Validate checks the platform rules: 1..MaxBatchDevices devices with
// valid ids, each with at least one service whose service_id is set and
// whose properties, when present, are a JSON object.
func (b BatchProperties) Validate() error {
	if len(b.Devices) == 0 || len(b.Devices) > MaxBatchDevices {
		return fmt.Errorf("%w: batch properties carry %d devices, want 1-%d", ErrLimit, len(b.Devices), MaxBatchDevices)
	}
	for i, d := range b.Devices {
		if err := subdevice.ValidateDeviceID(d.DeviceID); err != nil {
			return fmt.Errorf("%w: devices[%d]: %w", ErrBadField, i, err)
		}
		if err := validateServices(d.Services); err != nil {
			return fmt.Errorf("devices[%d]: %w", i, err)
		}
	}
	return nil
}

func validateServices(ss []Service) error {
	if len(ss) == 0 {
		return fmt.Errorf("%w: no services", ErrBadField)
	}
	for i, s := range ss {
		if s.ServiceID == "" {
			return fmt.Errorf("%w: services[%d]: empty service_id", ErrBadField, i)
		}
		if len(s.Properties) > 0 && !isObject(s.Properties) {
			return fmt.Errorf("%w: services[%d]: properties must be an object", ErrBadField, i)
		}
		if s.EventTime != "" {
			if _, err := ParseEventTime(s.EventTime); err != nil {
				return fmt.Errorf("services[%d]: %w", i, err)
			}
		}
	}
	return nil
}

// MessageUp is the optional "system format" of a device message
// (iotda-protocol §2.1). Content is a JSON string or a JSON object. A
// gateway speaking for a sub-device sets ObjectDeviceID.
type MessageUp struct {
	ObjectDeviceID string          `json:"object_device_id,omitempty"`
	Name           string          `json:"name,omitempty"`
	ID             string          `json:"id,omitempty"`
	Content        json.RawMessage `json:"content"`
}

// MessageDown is the system format of a platform message; it has the same
// shape as MessageUp.
type MessageDown = MessageUp

// ContentBytes returns the content as application bytes: the unquoted
// text when the content is a JSON string, the raw JSON otherwise, nil when
// absent or null.
func (m MessageUp) ContentBytes() []byte {
	c := bytes.TrimSpace(m.Content)
	if len(c) == 0 || string(c) == "null" {
		return nil
	}
	if c[0] == '"' {
		var s string
		if err := json.Unmarshal(c, &s); err == nil {
			return []byte(s)
		}
	}
	return c
}

// ParseMessageDown decides whether a messages/down payload is the system
// format and decodes it (iotda-protocol §2.1). It is system format only if
// it is a JSON object whose keys are a subset of {object_device_id, name,
// id, content}, where object_device_id, name and id are strings or null.
//
// Decision: the SDKs also require content to be a string or null; we
// additionally accept a JSON object for content, because the documented
// upstream system format allows one and the platform echoes that shape.
// Arrays, numbers and booleans as content make the payload raw. Anything
// that is not system format returns system == false and a zero m; the
// caller then treats the whole payload as raw bytes for the device in the
// topic.
func ParseMessageDown(payload []byte) (m MessageUp, system bool) {
	p := bytes.TrimSpace(payload)
	if len(p) == 0 || p[0] != '{' {
		return MessageUp{}, false
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(p, &fields); err != nil {
		return MessageUp{}, false
	}
	for k, v := range fields {
		switch k {
		case "object_device_id", "name", "id":
			s, ok := stringOrNull(v)
			if !ok {
				return MessageUp{}, false
			}
			switch k {
			case "object_device_id":
				m.ObjectDeviceID = s
			case "name":
				m.Name = s
			default:
				m.ID = s
			}
		case "content":
			v = bytes.TrimSpace(v)
			switch {
			case string(v) == "null":
			case len(v) > 0 && (v[0] == '"' || v[0] == '{'):
				m.Content = bytes.Clone(v)
			default:
				return MessageUp{}, false
			}
		default:
			return MessageUp{}, false
		}
	}
	return m, true
}

func stringOrNull(v json.RawMessage) (string, bool) {
	v = bytes.TrimSpace(v)
	if string(v) == "null" {
		return "", true
	}
	if len(v) == 0 || v[0] != '"' {
		return "", false
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", false
	}
	return s, true
}

func isObject(v json.RawMessage) bool {
	v = bytes.TrimSpace(v)
	return len(v) >= 2 && v[0] == '{' && json.Valid(v)
}

// Command is a platform command (iotda-protocol §2.6). ObjectDeviceID is
// set when the command targets a sub-device.
type Command struct {
	ObjectDeviceID string          `json:"object_device_id,omitempty"`
	ServiceID      string          `json:"service_id"`
	CommandName    string          `json:"command_name"`
	Paras          json.RawMessage `json:"paras"`
}

// CommandResponse answers a command on the gateway's topic with the same
// request id (iotda-protocol §2.6). ResultCode 0 is success and the
// default when missing.
type CommandResponse struct {
	ResultCode   int             `json:"result_code"`
	ResponseName string          `json:"response_name,omitempty"`
	Paras        json.RawMessage `json:"paras,omitempty"`
}

// PropertySet is a property set request (iotda-protocol §2.4).
type PropertySet struct {
	ObjectDeviceID string    `json:"object_device_id,omitempty"`
	Services       []Service `json:"services"`
}

// PropertySetResponse answers a property set (iotda-protocol §2.4).
type PropertySetResponse struct {
	ResultCode int    `json:"result_code"`
	ResultDesc string `json:"result_desc,omitempty"`
}

// PropertyGet is a property query; an empty ServiceID asks for all
// services (iotda-protocol §2.5).
type PropertyGet struct {
	ObjectDeviceID string `json:"object_device_id,omitempty"`
	ServiceID      string `json:"service_id,omitempty"`
}

// PropertyGetResponse answers a property query (iotda-protocol §2.5).
type PropertyGetResponse struct {
	Services []Service `json:"services"`
}

// ShadowGet asks for a device shadow on the gateway's topic; the target
// is ObjectDeviceID (iotda-protocol §2.7).
type ShadowGet struct {
	ObjectDeviceID string `json:"object_device_id,omitempty"`
	ServiceID      string `json:"service_id,omitempty"`
}

// ShadowResponse carries the shadow array as the platform sent it
// (iotda-protocol §2.7).
type ShadowResponse struct {
	ObjectDeviceID string          `json:"object_device_id,omitempty"`
	Shadow         json.RawMessage `json:"shadow"`
}

// ShadowService is one entry of ShadowResponse.Shadow, for callers that
// decode it.
type ShadowService struct {
	ServiceID string      `json:"service_id"`
	Desired   *ShadowData `json:"desired,omitempty"`
	Reported  *ShadowData `json:"reported,omitempty"`
	Version   int64       `json:"version,omitempty"`
}

// ShadowData is the desired or reported half of a shadow service.
type ShadowData struct {
	Properties json.RawMessage `json:"properties,omitempty"`
	EventTime  string          `json:"event_time,omitempty"`
}
