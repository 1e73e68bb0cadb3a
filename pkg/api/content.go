package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
)

// Content returns r's JSON without the server-set fields (version and
// times): two resources with equal Content say the same thing. Map keys are
// sorted, so the bytes are deterministic.
func Content(r Resource) []byte {
	c := DeepCopy(r)
	m := c.GetMeta()
	m.Version = 0
	m.CreationTime, m.ModificationTime = zeroTime, zeroTime
	b, err := json.Marshal(c)
	if err != nil {
		panic("api: encode resource: " + err.Error())
	}
	return b
}

// SameContent reports whether a and b differ only in server-set fields.
func SameContent(a, b Resource) bool { return bytes.Equal(Content(a), Content(b)) }

// ContentHash is a short, stable digest of Content.
func ContentHash(r Resource) string { return HashBytes(Content(r)) }

// HashBytes is the digest ContentHash uses.
func HashBytes(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}
