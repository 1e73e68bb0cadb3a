package tokens

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// publishedKeys is the keySource of a federated zone: the UserTokenPublicKeys
// in its store, which KDS keeps equal to the global's ring (PublishUserKeys).
// The rule of the ring holds for them too: a key is current exactly when it
// exists and serial+1 does not, so the zone refuses a rotated key's tokens as
// soon as the newer public key arrives, even before the older one is gone.
type publishedKeys struct{ store store.Store }

func publicKeyKey(serial int) api.Key {
	return api.Key{Type: "UserTokenPublicKey", Name: UserSigningKeyName(serial)}
}

func (p publishedKeys) verificationKey(ctx context.Context, serial int) (ed25519.PublicKey, error) {
	r, err := p.store.Get(ctx, publicKeyKey(serial))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: signed with an unknown or rotated key (kid %d is not among the keys this zone has from the global)", ErrTokenSignature, serial)
	}
	if err != nil {
		return nil, fmt.Errorf("read user token public key %d: %w", serial, err)
	}
	_, err = p.store.Get(ctx, publicKeyKey(serial+1))
	switch {
	case err == nil:
		return nil, fmt.Errorf("%w: signed with an unknown or rotated key (kid %d has been rotated)", ErrTokenSignature, serial)
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("read user token public key %d: %w", serial+1, err)
	}
	k, ok := r.(*api.UserTokenPublicKey)
	if !ok {
		return nil, fmt.Errorf("read user token public key %d: the store returned a %T", serial, r)
	}
	pub, err := k.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("read user token public key %d: %w", serial, err)
	}
	return pub, nil
}

// Changes tells of changes to a store: Current's channel is closed when
// something changed. A store.Mirror is one.
type Changes interface {
	Current() (*store.View, <-chan struct{})
}

// PublishUserKeys keeps, until ctx ends, one UserTokenPublicKey in st for
// each user-token signing key there, holding its public half, and none
// other: a new key is published, a rotated one unpublished, and KDS carries
// both to every zone. It looks again whenever changes (which must follow
// GlobalSecret) says something changed. Every replica may run it: see
// publishOnce for why racing replicas agree. It returns the first error it
// cannot get past (the store is down), for the caller to run it again after
// a pause.
func PublishUserKeys(ctx context.Context, st store.Store, changes Changes, log *zap.Logger) error {
	ring := userRing(st)
	for {
		_, changed := changes.Current()
		if err := publishOnce(ctx, st, ring, log); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("publish user token keys: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// publishOnce makes the public keys in st what the ring says they should be,
// deciding from the store itself, read in an order that makes every decision
// right even while another replica rotates: the public keys first, then the
// ring. A public key whose private key is then gone was published when that
// key existed, so the key has since been rotated away for good (serials only
// grow): unpublishing it is right. A private key without a public one is
// published; should it be rotated away meanwhile, that rotation is a change
// that brings this loop, on every replica, back to unpublish it. Creations
// come first, so that zones hold a newer key before an older one goes.
func publishOnce(ctx context.Context, st store.Store, ring keyRing, log *zap.Logger) error {
	res, err := st.List(ctx, store.ListOptions{Type: "UserTokenPublicKey"})
	if err != nil {
		return err
	}
	published := map[string]bool{}
	for _, r := range res.Items {
		published[r.GetMeta().Name] = true
	}
	res, err = st.List(ctx, store.ListOptions{Type: "GlobalSecret"})
	if err != nil {
		return err
	}
	ringNames := map[string]bool{}
	var errs []error
	for _, r := range res.Items {
		s, ok := r.(*api.GlobalSecret)
		serial, inRing := ring.parseName(r.GetMeta().Name)
		if !ok || !inRing {
			continue
		}
		ringNames[s.Name] = true
		if published[s.Name] {
			continue
		}
		created, err := publish(ctx, st, serial, s)
		if err != nil {
			errs = append(errs, err)
		} else if created {
			log.Info("published a user-token public key", zap.Int("serial", serial))
		}
	}
	for name := range published {
		if ringNames[name] {
			continue
		}
		if err := st.Delete(ctx, api.Key{Type: "UserTokenPublicKey", Name: name}, 0); err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, fmt.Errorf("unpublish %s: %w", name, err))
			continue
		}
		log.Info("unpublished a rotated user-token public key", zap.String("name", name))
	}
	return errors.Join(errs...)
}

// publish stores the public half of secret, the signing key serial, and
// reports whether it did (false: another replica was first).
func publish(ctx context.Context, st store.Store, serial int, secret *api.GlobalSecret) (bool, error) {
	priv, err := parsePrivateKey(secret.Data)
	if err != nil {
		return false, fmt.Errorf("user token signing key %d: %w", serial, err)
	}
	text, err := api.EncodeEd25519PublicKeyPEM(priv.Public().(ed25519.PublicKey))
	if err != nil {
		return false, fmt.Errorf("user token signing key %d: encode public key: %w", serial, err)
	}
	k := &api.UserTokenPublicKey{Meta: api.Meta{Type: "UserTokenPublicKey", Name: secret.Name}, PublicKeyPEM: text}
	_, err = st.Create(ctx, k)
	switch {
	case errors.Is(err, store.ErrAlreadyExists):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("publish user token key %d: %w", serial, err)
	}
	return true, nil
}
