// Package iotda is the wire vocabulary of Huawei Cloud IoTDA as a gateway
// device speaks it over MQTT: CONNECT credentials, topic builders and the
// exact topic parser, the JSON payloads of messages, properties, commands,
// shadows and system events, and the platform limits.
//
// The package is pure: no MQTT client, no sockets, no goroutines, no global
// state. Every function is safe for concurrent use. Decoders (ParseTopic,
// ParseMessageDown, ParseEvents, ParseClientID) return errors for any input
// and never panic; fuzz tests hold them to it.
//
// All facts come from docs/iotda-protocol.md; comments cite its sections as
// "iotda-protocol §N". Every topic is built on the gateway's own device id,
// and sub-devices are addressed inside the payloads (iotda-protocol §3.1).
package iotda
