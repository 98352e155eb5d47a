// Package iotdasim is a local Huawei Cloud IoTDA platform for tests and
// development: an embedded MQTT broker (mochi-mqtt) that plays the platform
// side of docs/iotda-protocol.md, so that a gateway runs with no cloud
// account and protocol mistakes fail tests.
//
// What it does:
//   - checks CONNECT the IoTDA way (client id form, HMAC password, keepalive
//     range, optional X.509 login; iotda-protocol §1.2–§1.5) and refuses what
//     IoTDA refuses (QoS 2, will, retain, payloads over 1 MB, topics of other
//     devices; iotda-protocol §1.4, §1.6, §7);
//   - subscribes every device to its downstream system topics at QoS 0, as
//     the platform does implicitly (iotda-protocol §1.6);
//   - keeps platform state per gateway: sub-devices, their status, the list
//     version and a change log for sync (iotda-protocol §3);
//   - validates and answers every upstream system message, and records each
//     one and each protocol error for tests (Errors, WaitFor);
//   - sends downstream requests (commands, property set/get, messages,
//     events, console-side adds and deletes) from Go and from an optional
//     HTTP JSON API.
//
// Concurrency: mochi's callbacks do only cheap checks and hand each upstream
// PUBLISH to one platform goroutine over a bounded queue (a full queue makes
// the publishing client wait, as TCP backpressure would). All platform state
// is guarded by one mutex (Sim.mu), never held while publishing into the
// broker. Every method of Sim is safe for concurrent use. Recorded items are
// bounded per kind (Config.MaxRecords); drops are counted.
//
// A request that breaks a rule of the reference (a wrong service_id, a
// misspelt key, more entries than allowed) is recorded in Errors and not
// answered; a valid request with per-device problems (unknown device,
// duplicate node id) is answered with failed_devices entries. Refused
// publishes (QoS 2, retain, over 1 MB, another device's topic) drop the
// connection. Logins are refused with the CONNACK codes of
// iotda-protocol §1.5; a CONNECT with a will gets 0x05.
//
// Lifecycle: New, Start, then Close. Stop ends a run like Close (listeners,
// connections, broker, HTTP API and goroutines) but keeps the platform
// state and the recordings; Start then serves the same addresses again, so
// a test can take the platform away and bring it back, as in an outage.
//
// Choices where IoTDA's behaviour is undocumented (iotda-protocol Appendix B)
// are documented on Config and on the methods; they are the simulator's, not
// the platform's.
package iotdasim
