package gateway

import (
	"context"
	"encoding/json"

	"github.com/subgate/subgate/northbound/iotda"
	"github.com/subgate/subgate/southbound"
	"github.com/subgate/subgate/southbound/frame"
)

// otaManager handles $ota events for sub-devices (iotda-protocol §4).
//
// This first cut answers version queries from the versions devices
// reported in their hello (§4.1) and refuses upgrade notifications with an
// honest failure report (§4.5, result code 255) instead of silence or a
// faked success; firmware transfer to sub-devices is issue 6.
type otaManager struct {
	g *Gateway
}

func newOTAManager(g *Gateway) *otaManager { return &otaManager{g: g} }

// run owns the manager's goroutine until ctx is done.
func (o *otaManager) run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

// event handles one $ota event from the platform (downlink goroutine; must
// not block).
func (o *otaManager) event(target string, ev iotda.Event) {
	g := o.g
	if target == "" || target == g.gw {
		g.log.Info("OTA event for the gateway itself ignored", "component", "gateway", "event", ev.EventType)
		return
	}
	d, ok := g.devs.ByID(target)
	if !ok {
		g.log.Info("OTA event for an unknown sub-device", "component", "gateway", "device_id", target)
		return
	}
	switch ev.EventType {
	case iotda.EventVersionQuery:
		g.publishEvent(ClassOTA, "ota", target, iotda.ServiceOTA, iotda.EventVersionReport,
			iotda.VersionReportParas{FwVersion: d.FwVersion, SwVersion: d.SwVersion})
	case iotda.EventFirmwareUpgrade, iotda.EventSoftwareUpgrade, iotda.EventFirmwareUpgradeV2, iotda.EventSoftwareUpgradeV2:
		var up iotda.UpgradeParas
		_ = json.Unmarshal(ev.Paras, &up)
		g.publishEvent(ClassOTA, "ota", target, iotda.ServiceOTA, iotda.EventUpgradeProgress, iotda.ProgressParas{
			ResultCode: 255, Version: up.Version,
			Description: "sub-device firmware transfer is not supported by this gateway build",
		})
	}
}

// frame handles an OTA frame from a device (worker goroutine).
func (o *otaManager) frame(c *southbound.Conn, deviceID string, f frame.Frame) {
	o.g.sendErr(c, frame.CodeUnsupported, f.Seq, f.RequestID, "no OTA job is running for this device")
}

// online and offline tell the manager about a device's connection (worker
// goroutines; must not block).
func (o *otaManager) online(c *southbound.Conn, deviceID string)  {}
func (o *otaManager) offline(c *southbound.Conn, deviceID string) {}
