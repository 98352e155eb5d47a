package northbound

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// publishType is the MQTT control packet type of PUBLISH (MQTT 3.1.1
// §2.2.1), in the high nibble of a packet's first byte.
const publishType = 3

// wireConn reports every PUBLISH packet written to the socket, so that the
// quota is counted when a message really leaves (Config.OnPublishWritten)
// rather than when it was handed to the MQTT client. paho writes each
// packet with exactly one Write call (packets.*.Write), so the first byte
// of every Write is a fixed header.
type wireConn struct {
	net.Conn
	wrote func()
}

func (c *wireConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 && b[0]>>4 == publishType {
		// Counted even when cut short: the platform may have counted it.
		c.wrote()
	}
	return n, err
}

// dialer opens the MQTT connection like paho's own (tcp://, ssl:// with
// the TLS settings of the options, proxies from the environment) and wraps
// it in a wireConn when wrote is set.
func dialer(wrote func()) mqtt.OpenConnectionFunc {
	return func(u *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
		d := &net.Dialer{Timeout: o.ConnectTimeout}
		var (
			conn net.Conn
			err  error
		)
		switch u.Scheme {
		case "tcp", "mqtt":
			conn, err = proxy.FromEnvironmentUsing(d).Dial("tcp", u.Host)
		case "ssl", "tls", "mqtts":
			if os.Getenv("all_proxy") == "" {
				conn, err = tls.DialWithDialer(d, "tcp", u.Host, o.TLSConfig)
				break
			}
			raw, derr := proxy.FromEnvironmentUsing(d).Dial("tcp", u.Host)
			if derr != nil {
				return nil, derr
			}
			tc := tls.Client(raw, o.TLSConfig)
			if o.ConnectTimeout > 0 {
				_ = raw.SetDeadline(time.Now().Add(o.ConnectTimeout))
			}
			if err = tc.Handshake(); err != nil {
				_ = raw.Close()
				return nil, err
			}
			_ = raw.SetDeadline(time.Time{})
			conn = tc
		default:
			return nil, fmt.Errorf("northbound: unsupported scheme %q", u.Scheme)
		}
		if err != nil {
			return nil, err
		}
		if wrote == nil {
			return conn, nil
		}
		return &wireConn{Conn: conn, wrote: wrote}, nil
	}
}
