package iotda

import "time"

// Platform limits (iotda-protocol §7).
const (
	// MaxStatusesPerMessage bounds device_statuses in one
	// sub_device_update_status (iotda-protocol §3.3).
	MaxStatusesPerMessage = 100
	// MaxAddPerRequest bounds devices in one add_sub_device_request
	// (iotda-protocol §3.7).
	MaxAddPerRequest = 50
	// MaxDeletePerRequest bounds devices in one delete_sub_device_request
	// (iotda-protocol §3.8).
	MaxDeletePerRequest = 50
	// MaxBatchDevices bounds devices in one batch property report over MQTT
	// (iotda-protocol §2.3).
	MaxBatchDevices = 100
	// MaxPublishSize is the largest PUBLISH payload the platform accepts.
	MaxPublishSize = 1 << 20
	// MaxExtensionInfoSize bounds the encoded extension_info of an added
	// sub-device (iotda-protocol §3.7).
	MaxExtensionInfoSize = 1 << 10
	// MaxLogReportSize bounds one log_report (iotda-protocol §5.4).
	MaxLogReportSize = 1 << 20
	// MaxSubscriptions is the safe number of subscriptions per connection
	// (iotda-protocol §1.6: 50 in the English limits page, 100 elsewhere).
	MaxSubscriptions = 50
	// MaxUpstreamPerSecond is the upstream message rate per connection.
	MaxUpstreamPerSecond = 50
	// MaxRequestIDLen is subgate's bound on a request id in a topic. The
	// platform does not document one; its ids are 36-character UUIDs.
	MaxRequestIDLen = 128

	// MinKeepAlive and MaxKeepAlive bound the CONNECT keepalive; outside
	// the range the platform answers CONNACK 0x02 (iotda-protocol §1.4).
	MinKeepAlive = 30 * time.Second
	MaxKeepAlive = 1200 * time.Second
	// DefaultKeepAlive is the keepalive the docs recommend.
	DefaultKeepAlive = 120 * time.Second
	// CommandTimeout is the platform's wait for a synchronous command
	// response (iotda-protocol §2.6).
	CommandTimeout = 20 * time.Second
	// ResponseTimeout is the time within which the platform answers add,
	// delete and status-update requests (iotda-protocol §7).
	ResponseTimeout = 30 * time.Second
)

// Service ids of the system services (iotda-protocol §3–§5).
const (
	ServiceSubDeviceManager = "$sub_device_manager"
	ServiceOTA              = "$ota"
	ServiceTimeSync         = "$time_sync"
	ServiceSDKInfo          = "$sdk_info"
	ServiceLog              = "$log"
	ServiceFileManager      = "$file_manager"
	ServiceDeviceRule       = "$device_rule"
)

// Event types (iotda-protocol §3–§5).
const (
	EventAddNotify            = "add_sub_device_notify"
	EventDeleteNotify         = "delete_sub_device_notify"
	EventSyncRequest          = "sub_device_sync_request"
	EventUpdateStatus         = "sub_device_update_status"
	EventUpdateStatusResponse = "sub_device_update_status_response"
	EventAddRequest           = "add_sub_device_request"
	EventAddResponse          = "add_sub_device_response"
	EventDeleteRequest        = "delete_sub_device_request"
	EventDeleteResponse       = "delete_sub_device_response"
	EventVersionQuery         = "version_query"
	EventVersionReport        = "version_report"
	EventFirmwareUpgrade      = "firmware_upgrade"
	EventSoftwareUpgrade      = "software_upgrade"
	EventFirmwareUpgradeV2    = "firmware_upgrade_v2"
	EventSoftwareUpgradeV2    = "software_upgrade_v2"
	EventUpgradeProgress      = "upgrade_progress_report"
	EventTimeSyncRequest      = "time_sync_request"
	EventTimeSyncResponse     = "time_sync_response"
	EventSDKInfoReport        = "sdk_info_report"
	EventLogReport            = "log_report"
	EventLogConfig            = "log_config"
)

// Sub-device states on the wire (iotda-protocol §3.2). A gateway reports
// only StatusOnline and StatusOffline; the platform also sends
// StatusInactive for devices never reported online.
const (
	StatusOnline   = "ONLINE"
	StatusOffline  = "OFFLINE"
	StatusInactive = "INACTIVE"
)

// OTA result codes of upgrade_progress_report (iotda-protocol §4.5).
const (
	OTASuccess            = 0
	OTADeviceInUse        = 1
	OTAPoorSignal         = 2
	OTAAlreadyLatest      = 3
	OTALowBattery         = 4
	OTANoStorage          = 5
	OTADownloadTimeout    = 6
	OTAVerifyFailed       = 7
	OTAUnsupportedPackage = 8
	OTANoMemory           = 9
	OTAInstallFailed      = 10
	OTAInternalError      = 255
)

// Log types of log_report (iotda-protocol §5.4).
const (
	LogDeviceStatus   = "DEVICE_STATUS"
	LogDeviceProperty = "DEVICE_PROPERTY"
	LogDeviceMessage  = "DEVICE_MESSAGE"
	LogDeviceCommand  = "DEVICE_COMMAND"
)
