package proxy

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// maxHello bounds what an ingress reads before it knows where a connection
// goes: a ClientHello with post-quantum key shares is under 2 KiB.
const maxHello = 16 << 10

// peekSNI reads a TLS ClientHello from c and returns the server name it
// asks for, with every byte read, which the caller passes on untouched
// (TLS is not terminated). It reads as little as it can: usually one
// read, the ClientHello's first record; a ClientHello spread over several
// records is put together. Whatever is not a ClientHello with a host name
// is an error that says what it is.
func peekSNI(c net.Conn) (string, []byte, error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 2048)
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= maxHello {
				return "", nil, fmt.Errorf("no complete ClientHello in the first %d bytes", maxHello)
			}
			buf = slices.Grow(buf, min(cap(buf), maxHello-cap(buf)))
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		hello, complete, perr := handshakeMessage(buf)
		if perr != nil {
			return "", nil, perr
		}
		if complete {
			sni, err := serverName(hello)
			return sni, buf, err
		}
		if err != nil {
			return "", nil, fmt.Errorf("read ClientHello: %w", err)
		}
	}
}

// handshakeMessage reassembles the first handshake message from the TLS
// records at the start of b. complete is false while more bytes are needed.
func handshakeMessage(b []byte) (msg []byte, complete bool, err error) {
	var hs []byte
	for len(b) >= 5 {
		if b[0] != 0x16 {
			return nil, false, fmt.Errorf("not a TLS handshake record (content type %d)", b[0])
		}
		if b[1] != 3 {
			return nil, false, fmt.Errorf("not a TLS record (version %d.%d)", b[1], b[2])
		}
		n := int(b[3])<<8 | int(b[4])
		if n == 0 || n > 1<<14 {
			return nil, false, fmt.Errorf("TLS record of %d bytes", n)
		}
		if len(b) < 5+n {
			break
		}
		hs = append(hs, b[5:5+n]...)
		b = b[5+n:]
		if len(hs) >= 4 {
			if hs[0] != 1 {
				return nil, false, fmt.Errorf("first handshake message is not a ClientHello (type %d)", hs[0])
			}
			size := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
			if size > maxHello {
				return nil, false, fmt.Errorf("ClientHello of %d bytes", size)
			}
			if len(hs) >= 4+size {
				return hs[4 : 4+size], true, nil
			}
		}
	}
	if len(hs) >= 1 && hs[0] != 1 {
		return nil, false, fmt.Errorf("first handshake message is not a ClientHello (type %d)", hs[0])
	}
	return nil, false, nil
}

var errNoSNI = errors.New("no SNI in the ClientHello")

// serverName finds the host name of a ClientHello's server_name extension
// (RFC 6066).
func serverName(hello []byte) (string, error) {
	s := cryptobyte.String(hello)
	var sessionID, ciphers, compression, exts cryptobyte.String
	if !s.Skip(2+32) || // version, random
		!s.ReadUint8LengthPrefixed(&sessionID) ||
		!s.ReadUint16LengthPrefixed(&ciphers) ||
		!s.ReadUint8LengthPrefixed(&compression) {
		return "", errors.New("malformed ClientHello")
	}
	if s.Empty() {
		return "", errNoSNI // no extensions at all
	}
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return "", errors.New("malformed ClientHello extensions")
	}
	for !exts.Empty() {
		var typ uint16
		var body cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&body) {
			return "", errors.New("malformed ClientHello extension")
		}
		if typ != 0 { // server_name
			continue
		}
		var names cryptobyte.String
		if !body.ReadUint16LengthPrefixed(&names) || !body.Empty() {
			return "", errors.New("malformed server_name extension")
		}
		for !names.Empty() {
			var nameType uint8
			var name cryptobyte.String
			if !names.ReadUint8(&nameType) || !names.ReadUint16LengthPrefixed(&name) {
				return "", errors.New("malformed server_name extension")
			}
			if nameType == 0 && len(name) > 0 {
				return string(name), nil
			}
		}
		return "", errNoSNI
	}
	return "", errNoSNI
}
