package xds

import (
	"fmt"
	"math/bits"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

// GRPCServerOptions are what a gRPC server that serves xDS should be made
// with, besides its credentials and keepalive policy: responses encoded
// in buffers of the size they need (see bufferPool).
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(protoCodec{pool: &bufferPool{}})}
}

// protoCodec is gRPC's proto codec (google.golang.org/grpc/encoding/proto)
// with its own pool for the buffers it encodes messages in.
type protoCodec struct{ pool mem.BufferPool }

var _ encoding.CodecV2 = protoCodec{}

func (c protoCodec) Marshal(v any) (mem.BufferSlice, error) {
	m := messageOf(v)
	if m == nil {
		return nil, fmt.Errorf("proto: marshal %T: not a proto.Message", v)
	}
	// UseCachedSize is safe: the size was just computed, and messages
	// are not modified once sent.
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true}
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := c.pool.Get(size)
	if _, err := opts.MarshalAppend((*buf)[:0], m); err != nil {
		c.pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, c.pool)}, nil
}

func (c protoCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m := messageOf(v)
	if m == nil {
		return fmt.Errorf("proto: unmarshal into %T: not a proto.Message", v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// Name is the content subtype gRPC's proto codec registers.
func (protoCodec) Name() string { return "proto" }

func messageOf(v any) proto.Message {
	switch v := v.(type) {
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(v)
	case protoadapt.MessageV2:
		return v
	}
	return nil
}

// bufferPool is a mem.BufferPool with a tier per power of two from 256 B to
// 4 MiB, whose buffers are handed out as they were put back. gRPC's
// default pool has no tier between 32 KiB and 1 MiB and clears a buffer's
// whole capacity each time it hands it out, so every response in between
// (a transparent sidecar's listeners, whose original-destination listener
// lists the mesh's instances) cost a 1 MiB clear: with 10k proxies
// connecting at once, most of the CP's CPU. Clearing is not needed:
// protoCodec writes each buffer up to the length it asked for before
// anything reads it.
type bufferPool struct {
	tiers [minTierShift + numTiers]sync.Pool // only [minTierShift:] used
}

const (
	minTierShift = 8  // 256 B
	numTiers     = 15 // up to 4 MiB
)

// tier is the shift of the smallest tier holding size, ok false when no
// tier is large enough.
func tier(size int) (int, bool) {
	shift := minTierShift
	if size > 1<<minTierShift {
		shift = bits.Len(uint(size - 1))
	}
	return shift, shift < minTierShift+numTiers
}

// Get returns a buffer of length size.
func (p *bufferPool) Get(size int) *[]byte {
	shift, ok := tier(size)
	if !ok {
		b := make([]byte, size)
		return &b
	}
	if b, _ := p.tiers[shift].Get().(*[]byte); b != nil {
		*b = (*b)[:size]
		return b
	}
	b := make([]byte, size, 1<<shift)
	return &b
}

// Put takes back a buffer Get returned (or a prefix of it).
func (p *bufferPool) Put(b *[]byte) {
	c := cap(*b)
	if c < 1<<minTierShift || c&(c-1) != 0 {
		return // not one of the tiers'
	}
	shift := bits.Len(uint(c)) - 1
	if shift >= minTierShift+numTiers {
		return
	}
	*b = (*b)[:0]
	p.tiers[shift].Put(b)
}
