package southbound

import "github.com/subgate/subgate/southbound/frame"

// newCodec returns the codec named in the config with the server's frame
// size limit.
func newCodec(name string, maxFrame int) (frame.Codec, error) {
	return frame.New(name, maxFrame)
}
