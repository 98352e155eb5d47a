package southboundtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/subgate/subgate/southbound/frame"
)

// iotda-protocol §4.5 result codes a device sends in ota_ack/ota_result.
const (
	OTAResultOK           = 0
	OTAResultVerifyFailed = 7
	OTAResultInstall      = 10
)

// Errors of ServeOTA.
var (
	// ErrOTAStopped is returned by ServeOTA when OTAOptions.StopAt bytes
	// are held: the image is partial, for resume tests.
	ErrOTAStopped = errors.New("southboundtest: OTA stopped on request")
	// ErrOTACanceled is returned when the gateway sends an error frame for
	// the job (an operator cancelled it, or the gateway gave up).
	ErrOTACanceled = errors.New("southboundtest: OTA ended by the gateway")
)

// OTAImage is what a device holds of an upgrade: the offer and the bytes
// received so far, contiguous from offset 0.
type OTAImage struct {
	RequestID string
	Version   string
	Sign      string
	Size      int64
	Data      []byte
}

// Complete reports whether every byte of the offered package is held.
func (im *OTAImage) Complete() bool {
	return im != nil && im.Size > 0 && int64(len(im.Data)) == im.Size
}

// OTAOptions say how a device behaves during an upgrade
// (docs/device-protocol.md §6).
type OTAOptions struct {
	// Held is an image kept from an earlier connection: when the offer is
	// for the same package (sign and size) the device accepts at
	// len(Held.Data) and the gateway resumes there.
	Held *OTAImage
	// Refuse, when non-zero, refuses the offer with this result code.
	Refuse int32
	// StopAt, when positive, makes ServeOTA return ErrOTAStopped with the
	// partial image once at least this many bytes are held.
	StopAt int64
	// Fail makes the device report FailCode (default 10, install failed)
	// after receiving every byte, instead of installing.
	Fail     bool
	FailCode int32
	// NewVersion is the version reported on success (default: the
	// offered version).
	NewVersion string
	// AckEvery acknowledges every n-th chunk only (and the last one); 0
	// or 1 acknowledges each chunk.
	AckEvery int
}

// ServeOTA plays the device side of one upgrade: it waits for ota_offer,
// accepts (or refuses), takes ota_chunk frames in order, answering each
// with ota_ack of its contiguous offset (an out-of-order chunk is dropped
// and answered with the current offset), checks the SHA-256 against the
// offer's sign (device-protocol §6, iotda-protocol §4.4) and sends
// ota_result. It returns the image. Frames that are not about OTA are
// skipped. ServeOTA must not run concurrently with Recv.
func (c *Client) ServeOTA(ctx context.Context, o OTAOptions) (*OTAImage, error) {
	var im *OTAImage
	h := sha256.New()
	chunks := 0
	for {
		f, err := c.Recv(ctx)
		if err != nil {
			return im, fmt.Errorf("southboundtest: OTA: %w", err)
		}
		switch f.Type {
		case frame.TypeOTAOffer:
			im = &OTAImage{RequestID: f.RequestID, Version: f.Version, Sign: strings.ToLower(f.Sign), Size: f.Size}
			if held := o.Held; held != nil && strings.EqualFold(held.Sign, f.Sign) && held.Size == f.Size &&
				int64(len(held.Data)) <= f.Size {
				im.Data = bytes.Clone(held.Data)
			}
			if o.Refuse != 0 {
				if err := c.Send(frame.Frame{Type: frame.TypeOTAAck, RequestID: f.RequestID, ResultCode: o.Refuse,
					ResultDesc: "refused by the test device"}); err != nil {
					return im, err
				}
				return im, nil
			}
			h.Reset()
			h.Write(im.Data)
			if err := c.Send(frame.Frame{Type: frame.TypeOTAAck, RequestID: f.RequestID, Offset: int64(len(im.Data))}); err != nil {
				return im, err
			}
			if im.Complete() {
				return im, c.otaFinish(im, h.Sum(nil), o)
			}
		case frame.TypeOTAChunk:
			if im == nil || f.RequestID != im.RequestID {
				continue
			}
			if f.Offset != int64(len(im.Data)) || int64(len(im.Data)+len(f.Content)) > im.Size {
				if err := c.Send(frame.Frame{Type: frame.TypeOTAAck, RequestID: im.RequestID, Offset: int64(len(im.Data))}); err != nil {
					return im, err
				}
				continue
			}
			im.Data = append(im.Data, f.Content...)
			h.Write(f.Content)
			chunks++
			done := im.Complete()
			if done || o.AckEvery <= 1 || chunks%o.AckEvery == 0 {
				if err := c.Send(frame.Frame{Type: frame.TypeOTAAck, RequestID: im.RequestID, Offset: int64(len(im.Data))}); err != nil {
					return im, err
				}
			}
			if o.StopAt > 0 && int64(len(im.Data)) >= o.StopAt && !done {
				return im, ErrOTAStopped
			}
			if done {
				return im, c.otaFinish(im, h.Sum(nil), o)
			}
		case frame.TypeError:
			if im != nil && f.RequestID == im.RequestID {
				return im, fmt.Errorf("%w: %s: %s", ErrOTACanceled, f.Code, f.Reason)
			}
		}
	}
}

// otaFinish verifies the image and sends ota_result.
func (c *Client) otaFinish(im *OTAImage, sum []byte, o OTAOptions) error {
	res := frame.Frame{Type: frame.TypeOTAResult, RequestID: im.RequestID}
	switch {
	case hex.EncodeToString(sum) != im.Sign:
		res.ResultCode, res.ResultDesc = OTAResultVerifyFailed, "SHA-256 does not match sign"
	case o.Fail:
		res.ResultCode, res.ResultDesc = o.FailCode, "install failed on purpose"
		if res.ResultCode == 0 {
			res.ResultCode = OTAResultInstall
		}
	default:
		res.Version = o.NewVersion
		if res.Version == "" {
			res.Version = im.Version
		}
	}
	return c.Send(res)
}
