package southbound

import "errors"

// Errors returned by Conn methods.
var (
	// ErrClosed is returned by Send on a connection that is closed or
	// closing.
	ErrClosed = errors.New("southbound: connection closed")
	// ErrSlowReader is returned by Send when the frame would take the
	// device's outbound buffer over MaxOutbound; the connection is then
	// closed with reason slow_reader.
	ErrSlowReader = errors.New("southbound: device is not reading (outbound buffer full)")
)

// Errors returned by New and Run.
var (
	// ErrNilHandler is returned by New without a Handler.
	ErrNilHandler = errors.New("southbound: nil handler")
	// ErrNoSecrets is returned by New with token auth and no Secrets.
	ErrNoSecrets = errors.New("southbound: token auth needs a Secrets source")
	// ErrRunTwice is returned by a second call to Run.
	ErrRunTwice = errors.New("southbound: Run called twice")
)

// Reasons passed to Handler.Logout. Each is also the reason label of
// subgate_southbound_disconnects_total named in its comment.
var (
	// ErrPeerClosed: the device closed the connection (peer).
	ErrPeerClosed = errors.New("southbound: closed by the device")
	// ErrIdle: nothing received for IdleTimeout (idle).
	ErrIdle = errors.New("southbound: idle timeout")
	// ErrKicked: closed by Kick, Conn.Close or a newer login (kicked).
	ErrKicked = errors.New("southbound: kicked")
	// ErrSlowReaderClosed: the device stopped reading (slow_reader).
	ErrSlowReaderClosed = errors.New("southbound: closed, device not reading")
	// ErrBadFrames: too many bad frames in a row, or broken framing
	// (bad_frames).
	ErrBadFrames = errors.New("southbound: too many bad frames")
	// ErrTooLarge: a frame above MaxFrame (too_large).
	ErrTooLarge = errors.New("southbound: frame too large")
	// ErrRateLimited: persistently over the uplink rate (rate_limited).
	ErrRateLimited = errors.New("southbound: persistently over the rate limit")
	// ErrShutdown: the gateway is stopping (shutdown).
	ErrShutdown = errors.New("southbound: gateway shutting down")
	// ErrConnFailed: a socket error (error).
	ErrConnFailed = errors.New("southbound: connection error")
	// ErrRejected: the login was refused or timed out (rejected); never
	// passed to Logout, since such a connection was never bound.
	ErrRejected = errors.New("southbound: rejected")
)
