package api

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
)

func TestUserTokenPublicKey(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	text, err := EncodeEd25519PublicKeyPEM(pub)
	if err != nil {
		t.Fatal(err)
	}
	k := &UserTokenPublicKey{Meta: Meta{Type: "UserTokenPublicKey", Name: "user-token-signing-key.1"}, PublicKeyPEM: text}
	if err := Validate(k); err != nil {
		t.Fatalf("a valid key: %v", err)
	}
	if got, err := k.PublicKey(); err != nil || !got.Equal(pub) {
		t.Fatalf("PublicKey = %x, %v; want %x", got, err, pub)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	notEd25519 := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	for name, bad := range map[string]string{
		"empty":          "",
		"not PEM":        "hello",
		"private key":    strings.ReplaceAll(text, "PUBLIC KEY", "PRIVATE KEY"),
		"two blocks":     text + text,
		"not Ed25519":    notEd25519,
		"garbage in PEM": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
	} {
		k.PublicKeyPEM = bad
		err := Validate(k)
		if err == nil || !strings.Contains(err.Error(), "publicKeyPEM: ") {
			t.Errorf("%s: %v, want an error naming publicKeyPEM", name, err)
		}
	}
}
