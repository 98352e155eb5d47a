package iotda

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/subgate/subgate/subdevice"
)

// Events is the envelope of every system event, up and down
// (iotda-protocol §2.8). Up, ObjectDeviceID names the sub-device a
// per-device service speaks for; down, the sub-device an event targets.
type Events struct {
	ObjectDeviceID string  `json:"object_device_id,omitempty"`
	Services       []Event `json:"services"`
}

// Event is one entry of Events.Services. Paras is a JSON object whose
// shape depends on ServiceID and EventType.
type Event struct {
	ServiceID string          `json:"service_id"`
	EventType string          `json:"event_type"`
	EventTime string          `json:"event_time,omitempty"`
	EventID   string          `json:"event_id,omitempty"`
	Paras     json.RawMessage `json:"paras"`
}

// NewEvents marshals a one-service envelope, the shape SDKs and the
// platform use (iotda-protocol §2.8). A zero t leaves event_time out; nil
// paras encode as {}; an empty objectDeviceID is left out.
func NewEvents(objectDeviceID, serviceID, eventType, eventID string, t time.Time, paras any) ([]byte, error) {
	raw := json.RawMessage("{}")
	if paras != nil {
		b, err := json.Marshal(paras)
		if err != nil {
			return nil, fmt.Errorf("iotda: marshal %s paras: %w", eventType, err)
		}
		raw = b
	}
	ev := Event{ServiceID: serviceID, EventType: eventType, EventID: eventID, Paras: raw}
	if !t.IsZero() {
		ev.EventTime = EventTime(t)
	}
	return json.Marshal(Events{ObjectDeviceID: objectDeviceID, Services: []Event{ev}})
}

// ParseEvents decodes an events payload and checks the envelope: at least
// one service, each with service_id and event_type, and paras, when
// present, a JSON object or null. Contents of paras are checked by
// DecodeParas and the Validate methods.
func ParseEvents(payload []byte) (Events, error) {
	var evs Events
	if err := json.Unmarshal(payload, &evs); err != nil {
		return Events{}, fmt.Errorf("%w: events: %w", ErrBadPayload, err)
	}
	if len(evs.Services) == 0 {
		return Events{}, fmt.Errorf("%w: events without services", ErrBadPayload)
	}
	for i, ev := range evs.Services {
		if ev.ServiceID == "" || ev.EventType == "" {
			return Events{}, fmt.Errorf("%w: services[%d]: service_id and event_type are required", ErrBadPayload, i)
		}
		p := bytes.TrimSpace(ev.Paras)
		if len(p) > 0 && string(p) != "null" && p[0] != '{' {
			return Events{}, fmt.Errorf("%w: services[%d]: paras must be an object", ErrBadPayload, i)
		}
	}
	return evs, nil
}

// DecodeParas unmarshals the event's paras into v. Absent or null paras
// leave v unchanged. Unknown fields are ignored, as the platform may add
// fields.
func (e Event) DecodeParas(v any) error {
	p := bytes.TrimSpace(e.Paras)
	if len(p) == 0 || string(p) == "null" {
		return nil
	}
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("%w: %s/%s paras: %w", ErrBadPayload, e.ServiceID, e.EventType, err)
	}
	return nil
}

// DecodeParasStrict is DecodeParas that also refuses unknown fields; the
// simulator uses it to catch misspelt keys.
func (e Event) DecodeParasStrict(v any) error {
	p := bytes.TrimSpace(e.Paras)
	if len(p) == 0 || string(p) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s/%s paras: %w", ErrBadPayload, e.ServiceID, e.EventType, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: %s/%s paras: trailing data", ErrBadPayload, e.ServiceID, e.EventType)
	}
	return nil
}

// DeviceInfo describes a sub-device in add/delete notifications and add
// responses (iotda-protocol §3.4, §3.5, §3.7). parent_device_id, node_id
// and device_id are required in add notifications; node_id is optional in
// delete notifications.
type DeviceInfo struct {
	ParentDeviceID string          `json:"parent_device_id"`
	NodeID         string          `json:"node_id,omitempty"`
	DeviceID       string          `json:"device_id"`
	Name           string          `json:"name,omitempty"`
	Description    string          `json:"description,omitempty"`
	ManufacturerID string          `json:"manufacturer_id,omitempty"`
	Model          string          `json:"model,omitempty"`
	ProductID      string          `json:"product_id,omitempty"`
	FwVersion      string          `json:"fw_version,omitempty"`
	SwVersion      string          `json:"sw_version,omitempty"`
	Status         string          `json:"status,omitempty"`
	ExtensionInfo  json.RawMessage `json:"extension_info,omitempty"`
}

// NotifyParas are the paras of add_sub_device_notify and
// delete_sub_device_notify (iotda-protocol §3.4, §3.5). Version is the
// gateway's sub-device list version after the change.
type NotifyParas struct {
	Version int64        `json:"version"`
	Devices []DeviceInfo `json:"devices"`
}

// SyncParas are the paras of sub_device_sync_request; a zero Version is
// left out (iotda-protocol §3.6).
type SyncParas struct {
	Version int64 `json:"version,omitempty"`
}

// DeviceStatus is one entry of a status update or its response
// (iotda-protocol §3.3).
type DeviceStatus struct {
	DeviceID string `json:"device_id"`
	Status   string `json:"status"`
}

// UpdateStatusParas are the paras of sub_device_update_status
// (iotda-protocol §3.3).
type UpdateStatusParas struct {
	DeviceStatuses []DeviceStatus `json:"device_statuses"`
}

// Validate checks 1..MaxStatusesPerMessage entries with valid device ids
// and status ONLINE or OFFLINE.
func (p UpdateStatusParas) Validate() error {
	if n := len(p.DeviceStatuses); n == 0 || n > MaxStatusesPerMessage {
		return fmt.Errorf("%w: %d device_statuses, want 1-%d", ErrLimit, n, MaxStatusesPerMessage)
	}
	for i, s := range p.DeviceStatuses {
		if err := subdevice.ValidateDeviceID(s.DeviceID); err != nil {
			return fmt.Errorf("%w: device_statuses[%d]: %w", ErrBadField, i, err)
		}
		if s.Status != StatusOnline && s.Status != StatusOffline {
			return fmt.Errorf("%w: device_statuses[%d]: status %q is not ONLINE or OFFLINE", ErrBadField, i, clip(s.Status))
		}
	}
	return nil
}

// FailedDevice is one entry of failed_devices in add, delete and status
// responses. error_code and error_msg are strings whose value set is not
// documented (iotda-protocol §3.9).
type FailedDevice struct {
	DeviceID  string `json:"device_id,omitempty"`
	NodeID    string `json:"node_id,omitempty"`
	ProductID string `json:"product_id,omitempty"`
	ErrorCode string `json:"error_code,omitempty"`
	ErrorMsg  string `json:"error_msg,omitempty"`
}

// UpdateStatusResponseParas are the paras of
// sub_device_update_status_response (iotda-protocol §3.3).
type UpdateStatusResponseParas struct {
	SuccessfulDevices []DeviceStatus `json:"successful_devices,omitempty"`
	FailedDevices     []FailedDevice `json:"failed_devices,omitempty"`
}

// AddDevice is one device of add_sub_device_request (iotda-protocol §3.7).
// ExtensionInfo, when set, must be a JSON object of at most
// MaxExtensionInfoSize bytes; it is never sent as "".
type AddDevice struct {
	NodeID         string          `json:"node_id"`
	ProductID      string          `json:"product_id"`
	DeviceID       string          `json:"device_id,omitempty"`
	ParentDeviceID string          `json:"parent_device_id,omitempty"`
	Name           string          `json:"name,omitempty"`
	Description    string          `json:"description,omitempty"`
	ExtensionInfo  json.RawMessage `json:"extension_info,omitempty"`
}

// Validate checks the identifier rules of iotda-protocol §0 and the
// extension_info rule of §3.7.
func (d AddDevice) Validate() error {
	if err := subdevice.ValidateNodeID(d.NodeID); err != nil {
		return fmt.Errorf("%w: %w", ErrBadField, err)
	}
	if err := subdevice.ValidateProductID(d.ProductID); err != nil {
		return fmt.Errorf("%w: %w", ErrBadField, err)
	}
	if d.DeviceID != "" {
		if err := subdevice.ValidateDeviceID(d.DeviceID); err != nil {
			return fmt.Errorf("%w: %w", ErrBadField, err)
		}
	}
	if d.ParentDeviceID != "" {
		if err := subdevice.ValidateDeviceID(d.ParentDeviceID); err != nil {
			return fmt.Errorf("%w: parent: %w", ErrBadField, err)
		}
	}
	if len(d.ExtensionInfo) > 0 {
		if len(d.ExtensionInfo) > MaxExtensionInfoSize {
			return fmt.Errorf("%w: extension_info is %d bytes, max %d", ErrLimit, len(d.ExtensionInfo), MaxExtensionInfoSize)
		}
		if !isObject(d.ExtensionInfo) {
			return fmt.Errorf("%w: extension_info must be a JSON object", ErrBadField)
		}
	}
	return nil
}

// AddRequestParas are the paras of add_sub_device_request.
type AddRequestParas struct {
	Devices []AddDevice `json:"devices"`
}

// Validate checks 1..MaxAddPerRequest valid devices.
func (p AddRequestParas) Validate() error {
	if n := len(p.Devices); n == 0 || n > MaxAddPerRequest {
		return fmt.Errorf("%w: %d devices in add request, want 1-%d", ErrLimit, n, MaxAddPerRequest)
	}
	for i, d := range p.Devices {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("devices[%d]: %w", i, err)
		}
	}
	return nil
}

// AddResponseParas are the paras of add_sub_device_response
// (iotda-protocol §3.7).
type AddResponseParas struct {
	SuccessfulDevices []DeviceInfo   `json:"successful_devices,omitempty"`
	FailedDevices     []FailedDevice `json:"failed_devices,omitempty"`
}

// DeleteRequestParas are the paras of delete_sub_device_request: device
// ids as plain strings (iotda-protocol §3.8).
type DeleteRequestParas struct {
	Devices []string `json:"devices"`
}

// Validate checks 1..MaxDeletePerRequest valid device ids.
func (p DeleteRequestParas) Validate() error {
	if n := len(p.Devices); n == 0 || n > MaxDeletePerRequest {
		return fmt.Errorf("%w: %d devices in delete request, want 1-%d", ErrLimit, n, MaxDeletePerRequest)
	}
	for i, id := range p.Devices {
		if err := subdevice.ValidateDeviceID(id); err != nil {
			return fmt.Errorf("%w: devices[%d]: %w", ErrBadField, i, err)
		}
	}
	return nil
}

// DeleteResponseParas are the paras of delete_sub_device_response;
// successful_devices is a list of strings here (iotda-protocol §3.8).
type DeleteResponseParas struct {
	SuccessfulDevices []string       `json:"successful_devices,omitempty"`
	FailedDevices     []FailedDevice `json:"failed_devices,omitempty"`
}

// VersionQueryParas are the paras of version_query; all fields appear only
// for batch tasks in gateway mode (iotda-protocol §4.1).
type VersionQueryParas struct {
	TaskID         string          `json:"task_id,omitempty"`
	SubDeviceCount int             `json:"sub_device_count,omitempty"`
	TaskExtInfo    json.RawMessage `json:"task_ext_info,omitempty"`
}

// VersionReportParas are the paras of version_report (iotda-protocol §4.1).
type VersionReportParas struct {
	FwVersion string `json:"fw_version,omitempty"`
	SwVersion string `json:"sw_version,omitempty"`
}

// UpgradeParas are the paras of firmware_upgrade, software_upgrade and
// their _v2 (OBS) variants (iotda-protocol §4.2).
type UpgradeParas struct {
	Version        string          `json:"version"`
	URL            string          `json:"url"`
	FileSize       int64           `json:"file_size,omitempty"`
	FileName       string          `json:"file_name,omitempty"`
	AccessToken    string          `json:"access_token,omitempty"`
	Expires        int64           `json:"expires,omitempty"`
	Sign           string          `json:"sign,omitempty"`
	CustomInfo     string          `json:"custom_info,omitempty"`
	TaskID         string          `json:"task_id,omitempty"`
	SubDeviceCount int             `json:"sub_device_count,omitempty"`
	TaskExtInfo    json.RawMessage `json:"task_ext_info,omitempty"`
}

// Validate checks the required fields for eventType: version and url
// always; file_size, file_name and a 64-hex-digit sign for the v1
// (IoTDA-stored) variants. For v2 only version and url are known to be
// mandatory (iotda-protocol §4.2, Appendix B item 9); a sign, when
// present, must still be 64 hex digits (§4.4).
func (p UpgradeParas) Validate(eventType string) error {
	if p.Version == "" || p.URL == "" {
		return fmt.Errorf("%w: upgrade needs version and url", ErrBadField)
	}
	switch eventType {
	case EventFirmwareUpgrade, EventSoftwareUpgrade:
		if p.FileSize <= 0 || p.FileName == "" || p.Sign == "" {
			return fmt.Errorf("%w: %s needs file_size, file_name and sign", ErrBadField, eventType)
		}
	case EventFirmwareUpgradeV2, EventSoftwareUpgradeV2:
	default:
		return fmt.Errorf("%w: %q is not an upgrade event", ErrBadField, clip(eventType))
	}
	if p.Sign != "" && !isHex64(p.Sign) {
		return fmt.Errorf("%w: sign must be 64 hex digits", ErrBadField)
	}
	if p.FileSize < 0 {
		return fmt.Errorf("%w: negative file_size", ErrBadField)
	}
	return nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// ProgressParas are the paras of upgrade_progress_report
// (iotda-protocol §4.5). result_code and version are required; progress
// is always sent (0-100).
type ProgressParas struct {
	ResultCode  int    `json:"result_code"`
	Progress    int    `json:"progress"`
	Version     string `json:"version"`
	Description string `json:"description,omitempty"`
}

// TimeSyncRequestParas are the paras of time_sync_request; milliseconds
// since the Unix epoch, as a number (iotda-protocol §5.2).
type TimeSyncRequestParas struct {
	DeviceSendTime int64 `json:"device_send_time"`
}

// TimeSyncResponseParas are the paras of time_sync_response, all in
// milliseconds since the Unix epoch (iotda-protocol §5.2).
type TimeSyncResponseParas struct {
	DeviceSendTime int64 `json:"device_send_time"`
	ServerRecvTime int64 `json:"server_recv_time"`
	ServerSendTime int64 `json:"server_send_time"`
}

// SyncedNow returns the current time in epoch milliseconds by the
// reference formula (server_recv + server_send + device_recv −
// device_send) / 2, where deviceRecv is the local clock in epoch
// milliseconds when the response arrived (iotda-protocol §5.2).
func SyncedNow(p TimeSyncResponseParas, deviceRecv int64) int64 {
	return (p.ServerRecvTime + p.ServerSendTime + deviceRecv - p.DeviceSendTime) / 2
}

// SDKInfoParas are the paras of sdk_info_report, all optional
// (iotda-protocol §5.3).
type SDKInfoParas struct {
	DeviceSDKVersion string `json:"device_sdk_version,omitempty"`
	SwVersion        string `json:"sw_version,omitempty"`
	FwVersion        string `json:"fw_version,omitempty"`
	DeviceIP         string `json:"device_ip,omitempty"`
}

// LogReportParas are the paras of log_report (iotda-protocol §5.4).
// Timestamp is epoch milliseconds as a string; Type is one of the Log*
// constants.
type LogReportParas struct {
	Timestamp string `json:"timestamp,omitempty"`
	Type      string `json:"type"`
	Content   string `json:"content"`
}

// Validate checks that type is one of the four documented values and
// content is set.
func (p LogReportParas) Validate() error {
	switch p.Type {
	case LogDeviceStatus, LogDeviceProperty, LogDeviceMessage, LogDeviceCommand:
	default:
		return fmt.Errorf("%w: log type %q", ErrBadField, clip(p.Type))
	}
	if p.Content == "" {
		return fmt.Errorf("%w: log content is required", ErrBadField)
	}
	return nil
}

// LogConfigParas are the paras of log_config (iotda-protocol §5.4):
// Switch is "on" or "off"; EndTime is when collection stops.
type LogConfigParas struct {
	Switch  string `json:"switch"`
	EndTime string `json:"end_time,omitempty"`
}

// End parses EndTime in either documented form, yyyyMMdd'T'HHmmss'Z' or
// the older yyyy-MM-dd'T'HH:mm:ss'Z' (iotda-protocol §5.4). ok is false
// when EndTime is empty or unparseable.
func (p LogConfigParas) End() (t time.Time, ok bool) {
	for _, layout := range []string{eventTimeLayout, "2006-01-02T15:04:05Z"} {
		if len(p.EndTime) == len(layout) {
			if t, err := time.Parse(layout, p.EndTime); err == nil {
				return t, true
			}
		}
	}
	return time.Time{}, false
}
