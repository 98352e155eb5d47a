// Package southbound is subgate's device-side server: it accepts plain-TCP
// device connections on gnet event loops (and, optionally, TLS connections
// with client certificates), authenticates them, enforces every per-device
// bound, and hands decoded frames to a Handler (the gateway).
//
// # Ownership and goroutines
//
//   - Event loops (gnet) own each plain connection's inbound buffer and
//     decoder state. OnTraffic peeks, decodes with the codec, clones each
//     frame out, discards, and pushes the frame to the connection's worker
//     without blocking. Loops never call the Handler, Secrets, bbolt or
//     paho, and take only short uncontended locks.
//   - TLS connections (crypto/tls needs blocking reads) have two goroutines
//     each: a reader that plays the loop's part, and a writer. They feed
//     the same workers and session table as gnet connections.
//   - Workers (Config.Workers goroutines) run every Handler and Secrets
//     call. A connection always maps to the same worker and its Handler
//     calls never overlap, so each device's frames stay in order. Each
//     worker queue admits at most Config.WorkerQueue frames; when full the
//     device gets a busy error frame carrying the frame's Seq.
//   - One sweeper goroutine enforces the hello and idle timeouts (gnet has
//     no deadlines) and pings idle native connections.
//   - Conn methods are safe from any goroutine. Sends are encoded by the
//     caller and written by the loop (AsyncWrite) or the TLS writer; they
//     never block, and a device whose unsent bytes exceed
//     Config.MaxOutbound is cut off.
//
// # Sessions
//
// The session table maps a node id to the connection that holds it, under
// one mutex with no I/O inside. A second login with the same node id kicks
// the old connection (its Logout runs before the new Login) or is refused,
// as Config.SecondLogin says. Lock order: Conn.hmu of the new connection,
// then Conn.hmu of the one it replaces; the session mutex and a
// connection's mu are leaves.
//
// # Authentication
//
// "open" trusts the node id in the hello (restricted by Config.AllowList).
// "token" sends a challenge nonce on connect and checks the hello's proof,
// hex(HMAC-SHA256(secret, nonce || node id)), with the secret from
// Secrets. Devices on the TLS listener are authenticated by their client
// certificate, whose common name is the node id. The demo codec (Huawei's
// demo devices, iotda-protocol §6) has no hello: the first message logs in.
//
// # Shutdown
//
// Run stops accepting, sends every device a shutting_down error frame,
// closes the connections (Logout runs for each bound one), drains the
// workers, and returns once every goroutine it started has exited.
package southbound
