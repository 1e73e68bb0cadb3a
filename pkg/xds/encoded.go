package xds

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/runtime/protoiface"
)

// encoded is a published resource together with its deterministic
// encoding, which proto.Marshal then returns instead of encoding the
// resource again. go-control-plane marshals every resource of every
// response on every stream; a resource that a mesh's N proxies share would
// be encoded N times per push, the largest cost of a push after
// generation. The bytes are the ones the resource's hash was computed
// from, so what is sent is exactly what was validated and versioned.
//
// In every other respect an encoded is its resource: reflection reads the
// resource, and GetName gives its name. Like the resource, it must not be
// modified. Only the snapshot cache sees it.
type encoded struct {
	res   types.Resource
	name  string
	bytes []byte
}

// GetName is the resource's name (types.ResourceWithName).
func (e *encoded) GetName() string { return e.name }

// ProtoReflect is the resource's reflection, with the methods that marshal
// it from its encoding.
func (e *encoded) ProtoReflect() protoreflect.Message {
	return encodedMessage{Message: e.res.ProtoReflect(), e: e}
}

type encodedMessage struct {
	protoreflect.Message
	e *encoded
}

func (m encodedMessage) Interface() protoreflect.ProtoMessage { return m.e }

// ProtoMethods makes proto.Marshal and proto.Size use the encoding. What it
// leaves nil (unmarshalling, merging, comparing) proto does by reflection.
func (m encodedMessage) ProtoMethods() *protoiface.Methods { return &encodedMethods }

// encodedMethods are stateless: they find the bytes in the message.
var encodedMethods = protoiface.Methods{
	Flags: protoiface.SupportMarshalDeterministic,
	Size: func(in protoiface.SizeInput) protoiface.SizeOutput {
		return protoiface.SizeOutput{Size: len(in.Message.(encodedMessage).e.bytes)}
	},
	Marshal: func(in protoiface.MarshalInput) (protoiface.MarshalOutput, error) {
		return protoiface.MarshalOutput{Buf: append(in.Buf, in.Message.(encodedMessage).e.bytes...)}, nil
	},
	// The resource was encoded without AllowPartial: it is initialized.
	CheckInitialized: func(protoiface.CheckInitializedInput) (protoiface.CheckInitializedOutput, error) {
		return protoiface.CheckInitializedOutput{}, nil
	},
}
