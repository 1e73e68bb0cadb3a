package tokens

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

func TestIssueAndVerify(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st, _ store.Store) {
		ctx := context.Background()
		c := newClock()
		i := newIssuer(t, st, c)
		tests := []struct {
			validFor, want time.Duration
		}{
			{720 * time.Hour, 720 * time.Hour},
			{0, DefaultValidity},
			{time.Minute, time.Minute},
		}
		for _, tt := range tests {
			token, err := i.IssueZoneToken(ctx, "zone-1", tt.validFor)
			if err != nil {
				t.Fatal(err)
			}
			zone, err := i.VerifyZoneToken(ctx, "  "+token+"\n")
			if err != nil || zone != "zone-1" {
				t.Fatalf("verify = %q, %v; want zone-1", zone, err)
			}
			claims, err := i.VerifyZoneTokenClaims(ctx, token)
			if err != nil {
				t.Fatal(err)
			}
			if got := claims.ExpiresAt.Sub(claims.IssuedAt); got != tt.want {
				t.Errorf("validFor %s: token valid for %s, want %s", tt.validFor, got, tt.want)
			}
			if claims.KeySerial != 1 || claims.ID == "" || claims.IssuedAt.Unix() != c.Now().Unix() {
				t.Errorf("claims = %+v, want key 1, an id and iat now", claims)
			}
			tok, _, err := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
			if err != nil {
				t.Fatal(err)
			}
			if tok.Header["alg"] != "EdDSA" || tok.Header["kid"] != "1" {
				t.Errorf("header = %v, want alg EdDSA and kid 1", tok.Header)
			}
			mc := tok.Claims.(jwt.MapClaims)
			if mc["sub"] != "zone-1" || mc["zone"] != "zone-1" || mc["jti"] == "" {
				t.Errorf("claims = %v, want sub and zone zone-1 and a jti", mc)
			}
		}
		a, _ := i.IssueZoneToken(ctx, "zone-1", 0)
		b, _ := i.IssueZoneToken(ctx, "zone-1", 0)
		if a == b {
			t.Error("two tokens for one zone are identical: jti is not random")
		}
	})
}

// flip changes one byte of the token's signature.
func flip(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	sig[10] ^= 0x01
	parts[2] = base64.RawURLEncoding.EncodeToString(sig)
	return strings.Join(parts, ".")
}

// withPayload replaces the token's claims and keeps its header and signature.
func withPayload(token, payload string) string {
	parts := strings.Split(token, ".")
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(payload))
	return strings.Join(parts, ".")
}

func TestVerifyRefuses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st, _ store.Store) {
		ctx := context.Background()
		c := newClock()
		i := newIssuer(t, st, c)
		key := storedKey(t, i, 1)
		_, foreign, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		good, err := i.IssueZoneToken(ctx, "zone-1", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		noExp := goodClaims("zone-1")
		noExp.ExpiresAt = nil
		badZone := goodClaims("Zone_1")
		otherSub := goodClaims("zone-1")
		otherSub.Subject = "zone-2"
		pubDER := []byte(key.Public().(ed25519.PublicKey))

		tests := []struct {
			name    string
			token   func() string
			advance time.Duration // move the clock first
			want    error
			message string
		}{
			{"empty", func() string { return "" }, 0, ErrTokenMissing, "no token was given"},
			{"white space", func() string { return " \n\t" }, 0, ErrTokenMissing, "no token"},
			{"one segment", func() string { return "garbage" }, 0, ErrTokenMalformed, "invalid number of segments"},
			{"not base64", func() string { return "a.b.c" }, 0, ErrTokenMalformed, "base64"},
			{"too long", func() string { return strings.Repeat("a", MaxTokenSize+1) }, 0, ErrTokenMalformed, "longer than"},
			{"expired", func() string { return good }, 2 * time.Hour, ErrTokenExpired, "expired at"},
			{"flipped signature byte", func() string { return flip(t, good) }, 0, ErrTokenSignature, "signature does not match"},
			{"payload changed", func() string {
				return withPayload(good, `{"zone":"zone-2","sub":"zone-2","exp":4102444800}`)
			}, 0, ErrTokenSignature, "signature does not match"},
			{"foreign key with the same kid", func() string {
				return sign(t, jwt.SigningMethodEdDSA, foreign, "1", goodClaims("zone-1"))
			}, 0, ErrTokenSignature, "signed with an unknown or rotated key"},
			{"alg none", func() string {
				return sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "1", goodClaims("zone-1"))
			}, 0, ErrTokenSignature, `algorithm "none" is refused`},
			{"HS256 keyed with the public key", func() string {
				return sign(t, jwt.SigningMethodHS256, pubDER, "1", goodClaims("zone-1"))
			}, 0, ErrTokenSignature, `algorithm "HS256" is refused`},
			{"unknown alg", func() string {
				return withHeader(t, good, `{"alg":"XS999","kid":"1"}`)
			}, 0, ErrTokenSignature, `algorithm "XS999" is refused`},
			{"no alg", func() string { return withHeader(t, good, `{"kid":"1"}`) }, 0, ErrTokenMalformed, "no alg"},
			{"unknown kid", func() string {
				return sign(t, jwt.SigningMethodEdDSA, key, "99", goodClaims("zone-1"))
			}, 0, ErrTokenSignature, "signed with an unknown or rotated key (kid 99)"},
			{"no kid", func() string {
				return sign(t, jwt.SigningMethodEdDSA, key, nil, goodClaims("zone-1"))
			}, 0, ErrTokenMalformed, "the header has no kid"},
			{"non-canonical kid", func() string {
				return sign(t, jwt.SigningMethodEdDSA, key, "01", goodClaims("zone-1"))
			}, 0, ErrTokenMalformed, `kid "01" is not a signing key serial`},
			{"numeric kid", func() string {
				return sign(t, jwt.SigningMethodEdDSA, key, 1, goodClaims("zone-1"))
			}, 0, ErrTokenMalformed, "kid is a float64, not a string"},
			{"no exp", func() string { return sign(t, jwt.SigningMethodEdDSA, key, "1", noExp) }, 0, ErrTokenMalformed, "no exp"},
			{"bad zone claim", func() string { return sign(t, jwt.SigningMethodEdDSA, key, "1", badZone) }, 0, ErrTokenMalformed, "zone claim"},
			{"sub differs from zone", func() string { return sign(t, jwt.SigningMethodEdDSA, key, "1", otherSub) }, 0, ErrTokenMalformed, `sub "zone-2"`},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				token := tt.token()
				c.Advance(tt.advance)
				defer c.Advance(-tt.advance)
				zone, err := i.VerifyZoneToken(ctx, token)
				if !errors.Is(err, tt.want) || zone != "" {
					t.Fatalf("verify = %q, %v; want an error wrapping %q", zone, err, tt.want)
				}
				if !IsInvalid(err) || !strings.HasPrefix(err.Error(), "verify zone token: ") || !strings.Contains(err.Error(), tt.message) {
					t.Errorf("error %q: want a verdict starting with %q and containing %q", err, "verify zone token: ", tt.message)
				}
				for _, other := range []error{ErrTokenMissing, ErrTokenMalformed, ErrTokenExpired, ErrTokenSignature} {
					if other != tt.want && errors.Is(err, other) {
						t.Errorf("error %q also wraps %q", err, other)
					}
				}
			})
		}
		if zone, err := i.VerifyZoneToken(ctx, good); err != nil || zone != "zone-1" {
			t.Errorf("the good token after all that: %q, %v", zone, err)
		}
	})
}

// withHeader replaces the token's header and keeps its claims and signature.
func withHeader(t *testing.T, token, header string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	parts[0] = base64.RawURLEncoding.EncodeToString([]byte(header))
	return strings.Join(parts, ".")
}

func TestRotationRevokesOlderTokens(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st, _ store.Store) {
		ctx := context.Background()
		i := newIssuer(t, st, nil)
		old, err := i.IssueZoneToken(ctx, "zone-1", 0)
		if err != nil {
			t.Fatal(err)
		}
		for want := 2; want <= 3; want++ {
			serial, err := i.RotateKey(ctx)
			if err != nil || serial != want {
				t.Fatalf("rotate = %d, %v; want %d", serial, err, want)
			}
			if got := serials(t, i); !slices.Equal(got, []int{want}) {
				t.Errorf("keys after rotation = %v, want only %d", got, want)
			}
			_, err = i.VerifyZoneToken(ctx, old)
			if !errors.Is(err, ErrTokenSignature) || !strings.Contains(err.Error(), "signed with an unknown or rotated key") {
				t.Errorf("token of the previous key: %v; want it refused as signed with a rotated key", err)
			}
			fresh, err := i.IssueZoneToken(ctx, "zone-2", 0)
			if err != nil {
				t.Fatal(err)
			}
			claims, err := i.VerifyZoneTokenClaims(ctx, fresh)
			if err != nil || claims.Zone != "zone-2" || claims.KeySerial != want {
				t.Fatalf("token after rotation: %+v, %v; want zone-2 signed by key %d", claims, err, want)
			}
			old = fresh
		}
	})
}

// TestReplicasAgree runs two Issuers over one database, as two global CP
// replicas do: whatever one does, the other sees at once.
func TestReplicasAgree(t *testing.T) {
	forEachBackend(t, func(t *testing.T, stA, stB store.Store) {
		ctx := context.Background()
		a, b := NewIssuer(stA), NewIssuer(stB)
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for n := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[n] = []*Issuer{a, b}[n%2].EnsureKey(ctx)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("racing EnsureKey: %v", err)
		}
		if got := serials(t, a); !slices.Equal(got, []int{1}) {
			t.Fatalf("keys after racing EnsureKey = %v, want [1]", got)
		}
		fromA, err := a.IssueZoneToken(ctx, "zone-1", 0)
		if err != nil {
			t.Fatal(err)
		}
		if zone, err := b.VerifyZoneToken(ctx, fromA); err != nil || zone != "zone-1" {
			t.Fatalf("B verifying A's token = %q, %v", zone, err)
		}
		if _, err := b.RotateKey(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := a.VerifyZoneToken(ctx, fromA); !errors.Is(err, ErrTokenSignature) {
			t.Fatalf("A verifying its own token after B rotated = %v, want ErrTokenSignature", err)
		}
		fromA, err = a.IssueZoneToken(ctx, "zone-1", 0)
		if err != nil {
			t.Fatal(err)
		}
		if c, err := b.VerifyZoneTokenClaims(ctx, fromA); err != nil || c.KeySerial != 2 {
			t.Fatalf("B verifying A's new token = %+v, %v; want key 2", c, err)
		}

		// Rotations racing on both replicas all take effect.
		serialsSeen := make([]int, 6)
		for n := range serialsSeen {
			wg.Add(1)
			go func() {
				defer wg.Done()
				serialsSeen[n], errs[n] = []*Issuer{a, b}[n%2].RotateKey(ctx)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("racing rotations: %v", err)
		}
		slices.Sort(serialsSeen)
		if got := serials(t, b); len(got) != 1 || got[0] != serialsSeen[len(serialsSeen)-1] {
			t.Errorf("keys after racing rotations = %v, want only the highest of %v", got, serialsSeen)
		}
		if _, err := b.VerifyZoneToken(ctx, fromA); !errors.Is(err, ErrTokenSignature) {
			t.Errorf("key-2 token after racing rotations = %v, want ErrTokenSignature", err)
		}
	})
}

// TestRotationRevokesEvenWhenDeletesFail checks that a token of an older key
// is refused from the moment the new key exists.
func TestRotationRevokesEvenWhenDeletesFail(t *testing.T) {
	ctx := context.Background()
	st := &faultyStore{Store: store.NewMemory(0)}
	i := newIssuer(t, st, nil)
	old, err := i.IssueZoneToken(ctx, "zone-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	st.set(false, true)
	serial, err := i.RotateKey(ctx)
	if serial != 2 || !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "key 2 signs now and older tokens are refused") {
		t.Fatalf("rotate with failing deletes = %d, %v; want 2 and an error saying the rotation took effect", serial, err)
	}
	if got := serials(t, i); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("keys = %v, want [1 2]", got)
	}
	if _, err := i.VerifyZoneToken(ctx, old); !errors.Is(err, ErrTokenSignature) || !strings.Contains(err.Error(), "kid 1 has been rotated") {
		t.Errorf("token of key 1 = %v, want it refused as rotated", err)
	}
	st.set(false, false)
	if serial, err := i.RotateKey(ctx); serial != 3 || err != nil {
		t.Fatalf("rotate again = %d, %v", serial, err)
	}
	if got := serials(t, i); !slices.Equal(got, []int{3}) {
		t.Errorf("keys = %v, want [3]", got)
	}
}

// TestStoreDownIsNotAVerdict checks that a failure to read the keys is not
// reported as a bad token.
func TestStoreDownIsNotAVerdict(t *testing.T) {
	ctx := context.Background()
	st := &faultyStore{Store: store.NewMemory(0)}
	i := newIssuer(t, st, nil)
	token, err := i.IssueZoneToken(ctx, "zone-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	st.set(true, false)
	_, err = i.VerifyZoneToken(ctx, token)
	if err == nil || IsInvalid(err) || !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("verify with the store down = %v; want store.ErrUnavailable and no verdict", err)
	}
}

func TestIssueRefusesBadArguments(t *testing.T) {
	i := newIssuer(t, store.NewMemory(0), nil)
	tests := []struct {
		zone     string
		validFor time.Duration
		message  string
	}{
		{"", 0, "zone: required"},
		{"Zone-1", 0, "not a DNS-1123 label"},
		{"zone_1", 0, "not a DNS-1123 label"},
		{"zone-1.east", 0, "not a DNS-1123 label"},
		{"-zone", 0, "not a DNS-1123 label"},
		{strings.Repeat("z", 64), 0, "not a DNS-1123 label"},
		{"zone-1", -time.Second, "is negative"},
		{"zone-1", MaxValidity + time.Second, "longer than the maximum"},
	}
	for _, tt := range tests {
		token, err := i.IssueZoneToken(context.Background(), tt.zone, tt.validFor)
		if token != "" || !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tt.message) {
			t.Errorf("issue(%q, %s) = %q, %v; want ErrInvalidArgument saying %q", tt.zone, tt.validFor, token, err, tt.message)
		}
	}
	if _, err := i.IssueZoneToken(context.Background(), strings.Repeat("z", 63), MaxValidity); err != nil {
		t.Errorf("the longest name and validity: %v", err)
	}
}

func TestIssueCreatesTheFirstKey(t *testing.T) {
	ctx := context.Background()
	i := NewIssuer(store.NewMemory(0))
	token, err := i.IssueZoneToken(ctx, "zone-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if zone, err := i.VerifyZoneToken(ctx, token); err != nil || zone != "zone-1" {
		t.Errorf("verify = %q, %v", zone, err)
	}
	if err := i.EnsureKey(ctx); err != nil {
		t.Fatal(err)
	}
	if got := serials(t, i); !slices.Equal(got, []int{1}) {
		t.Errorf("keys = %v, want [1]", got)
	}
}

// TestPEMKey checks that a key stored as PEM, as an operator might import
// one, signs and verifies.
func TestPEMKey(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if _, err := st.Create(ctx, &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: SigningKeyName(1)}, Data: data}); err != nil {
		t.Fatal(err)
	}
	i := newIssuer(t, st, nil)
	token, err := i.IssueZoneToken(ctx, "zone-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if zone, err := i.VerifyZoneToken(ctx, token); err != nil || zone != "zone-1" {
		t.Errorf("verify = %q, %v", zone, err)
	}
	forged := sign(t, jwt.SigningMethodEdDSA, priv, "1", goodClaims("zone-9"))
	if zone, err := i.VerifyZoneToken(ctx, forged); err != nil || zone != "zone-9" {
		t.Errorf("a token signed with the imported key = %q, %v", zone, err)
	}
}

func TestUnusableStoredKey(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	secret := []byte("-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0\n-----END RSA PRIVATE KEY-----\n")
	if _, err := st.Create(ctx, &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: SigningKeyName(1)}, Data: secret}); err != nil {
		t.Fatal(err)
	}
	_, err := NewIssuer(st).IssueZoneToken(ctx, "zone-1", 0)
	if err == nil || !strings.Contains(err.Error(), "not a PKCS#8 Ed25519 private key") || strings.Contains(err.Error(), "c2VjcmV0") {
		t.Errorf("issue with an unusable key = %v; want a clear error without the key's bytes", err)
	}
}

func TestSigningKeyNames(t *testing.T) {
	tests := []struct {
		name   string
		serial int
		ok     bool
	}{
		{"zone-token-signing-key.1", 1, true},
		{"zone-token-signing-key.42", 42, true},
		{"zone-token-signing-key.0", 0, false},
		{"zone-token-signing-key.01", 0, false},
		{"zone-token-signing-key.-1", 0, false},
		{"zone-token-signing-key.+1", 0, false},
		{"zone-token-signing-key.", 0, false},
		{"zone-token-signing-key.99999999999999999999", 0, false},
		{"kds-tls", 0, false},
	}
	for _, tt := range tests {
		serial, ok := ParseSigningKeyName(tt.name)
		if serial != tt.serial || ok != tt.ok {
			t.Errorf("ParseSigningKeyName(%q) = %d, %v; want %d, %v", tt.name, serial, ok, tt.serial, tt.ok)
		}
		if ok && SigningKeyName(serial) != tt.name {
			t.Errorf("SigningKeyName(%d) = %q, want %q", serial, SigningKeyName(serial), tt.name)
		}
	}
	secret := &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: SigningKeyName(7)}, Data: []byte{1}}
	if err := api.Validate(secret); err != nil {
		t.Errorf("a signing key's resource is not valid: %v", err)
	}
}
