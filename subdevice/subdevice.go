// Package subdevice is the shared vocabulary of subgate: what a sub-device
// is, which states it can be in, and the in-memory registry of all known
// sub-devices.
//
// Every other package may import subdevice; subdevice imports nothing of
// subgate. The Registry is safe for concurrent use: one mutex guards its maps,
// no I/O happens while it is held, and every method returns copies.
package subdevice

import (
	"errors"
	"fmt"
	"time"
)

// Status is a sub-device state as the platform knows it (iotda-protocol §3.2).
type Status string

// Platform states. A new sub-device stays Inactive until the gateway reports
// it Online once.
const (
	Online   Status = "ONLINE"
	Offline  Status = "OFFLINE"
	Inactive Status = "INACTIVE"
)

// Valid reports whether s is one of the states the platform sends.
func (s Status) Valid() bool {
	return s == Online || s == Offline || s == Inactive
}

// Device is one sub-device record. The mapping NodeID <-> DeviceID is stored
// as the platform sent it and never computed by splitting strings
// (iotda-protocol §0).
type Device struct {
	NodeID      string `json:"node_id"`
	DeviceID    string `json:"device_id"`
	ProductID   string `json:"product_id,omitempty"`
	Name        string `json:"name,omitempty"`
	Description string `json:"description,omitempty"`
	// Status is the state last confirmed by or reported to the platform.
	Status    Status `json:"status"`
	FwVersion string `json:"fw_version,omitempty"`
	SwVersion string `json:"sw_version,omitempty"`
	// Remote is the address of the device's last connection.
	Remote      string    `json:"remote,omitempty"`
	ConnectedAt time.Time `json:"connected_at,omitzero"`
	LastSeen    time.Time `json:"last_seen,omitzero"`
}

// Errors of identifier validation.
var (
	ErrBadNodeID    = errors.New("subdevice: node id must be 1-64 characters of [A-Za-z0-9_-]")
	ErrBadDeviceID  = errors.New("subdevice: device id must be 1-128 characters of [A-Za-z0-9_-]")
	ErrBadProductID = errors.New("subdevice: product id must be 1-36 characters of [A-Za-z0-9_-]")
)

// Identifier limits from iotda-protocol §0 and §7.
const (
	MaxNodeIDLen    = 64
	MaxDeviceIDLen  = 128
	MaxProductIDLen = 36
)

func validID(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ValidateNodeID checks a node id against the platform's rule.
func ValidateNodeID(s string) error {
	if !validID(s, MaxNodeIDLen) {
		return fmt.Errorf("%w: %q", ErrBadNodeID, truncate(s))
	}
	return nil
}

// ValidateDeviceID checks a device id against the platform's rule.
func ValidateDeviceID(s string) error {
	if !validID(s, MaxDeviceIDLen) {
		return fmt.Errorf("%w: %q", ErrBadDeviceID, truncate(s))
	}
	return nil
}

// ValidateProductID checks a product id against the platform's rule.
func ValidateProductID(s string) error {
	if !validID(s, MaxProductIDLen) {
		return fmt.Errorf("%w: %q", ErrBadProductID, truncate(s))
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
