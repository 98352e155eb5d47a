package frame

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
)

// Proof returns the token proof a device sends in its hello after a
// challenge: the lowercase hex of HMAC-SHA256 with key secret over nonce
// followed by the bytes of nodeID (docs/device-protocol.md §2).
func Proof(secret, nonce []byte, nodeID string) string {
	var sum [sha256.Size]byte
	return hex.EncodeToString(proofMAC(sum[:0], secret, nonce, nodeID))
}

// CheckProof reports whether proof is the token proof for secret, nonce and
// nodeID. The hex digits may be of either case; the comparison of the MACs
// takes constant time.
func CheckProof(secret, nonce []byte, nodeID, proof string) bool {
	if len(proof) != 2*sha256.Size {
		return false
	}
	var got [sha256.Size]byte
	if _, err := hex.Decode(got[:], []byte(proof)); err != nil {
		return false
	}
	var want [sha256.Size]byte
	return hmac.Equal(got[:], proofMAC(want[:0], secret, nonce, nodeID))
}

func proofMAC(dst, secret, nonce []byte, nodeID string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(nonce)
	m.Write([]byte(nodeID))
	return m.Sum(dst)
}
