package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"
)

// ErrMalformed marks input that is not a well-formed resource document:
// broken YAML or JSON, an unknown field, a wrong value type, an unknown type.
var ErrMalformed = errors.New("malformed resource")

// MaxDocumentSize bounds one decoded document; larger input is refused before
// it is parsed.
const MaxDocumentSize = 4 << 20

// Decode parses one YAML or JSON document strictly: an unknown field, a
// duplicate key or a value of the wrong type is an error that names the field.
// It does not validate; call Validate for that.
func Decode(data []byte) (Resource, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: document is %d bytes, more than the limit of %d", ErrMalformed, len(data), MaxDocumentSize)
	}
	var head struct {
		Type string `json:"type"`
	}
	if err := yaml.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, cleanDecodeError(err))
	}
	if head.Type == "" {
		return nil, errNoType
	}
	r, ok := New(head.Type)
	if !ok {
		return nil, fmt.Errorf("%w: type: unknown type %q", ErrMalformed, head.Type)
	}
	if err := decodeStrict(data, r); err != nil {
		return nil, err
	}
	return r, nil
}

// decodeStrict decodes into r and reports every unknown field by its path.
// Field names must match exactly: encoding/json alone would take "NAME" for
// "name".
func decodeStrict(data []byte, r Resource) error {
	err := yaml.UnmarshalStrict(data, r)
	if err == nil || strings.Contains(err.Error(), "unknown field") {
		if unknown := unknownFields(data, r); len(unknown) > 0 {
			return fmt.Errorf("%w: unknown field %s", ErrMalformed, strings.Join(unknown, ", "))
		}
	}
	if err != nil {
		return fmt.Errorf("%w: %s", ErrMalformed, cleanDecodeError(err))
	}
	return nil
}

// errNoType is Decode's answer to a document without a type.
var errNoType = fmt.Errorf("%w: type: required", ErrMalformed)

// singleDocument refuses a stream of several YAML documents where one is
// expected: the others would be silently ignored.
func singleDocument(data []byte) error {
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	n := 0
	for {
		var node yamlv3.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return nil // the decoder proper reports syntax errors
		}
		if n++; n > 1 {
			return fmt.Errorf("%w: expected one document, found several", ErrMalformed)
		}
	}
}

// DecodeAs parses a document that must be of type typ. A document that omits
// type gets typ.
func DecodeAs(data []byte, typ string) (Resource, error) {
	if err := singleDocument(data); err != nil {
		return nil, err
	}
	r, err := Decode(data)
	if errors.Is(err, errNoType) {
		r, _ = New(typ)
		if uerr := decodeStrict(data, r); uerr != nil {
			return nil, uerr
		}
		r.GetMeta().Type = typ
		return r, nil
	}
	if err != nil {
		return nil, err
	}
	if got := r.GetMeta().Type; got != typ {
		return nil, fmt.Errorf("%w: type: is %q, expected %q", ErrMalformed, got, typ)
	}
	return r, nil
}

// DocumentError locates a problem in a multi-document stream.
type DocumentError struct {
	Index int // 0-based position of the document
	Line  int // line where the document starts
	Err   error
}

func (e *DocumentError) Error() string {
	return fmt.Sprintf("document %d (line %d): %v", e.Index+1, e.Line, e.Err)
}

func (e *DocumentError) Unwrap() error { return e.Err }

// DecodeAll parses a multi-document YAML stream. Empty documents are skipped.
// Every document is decoded and validated; the returned errors (each a
// *DocumentError) cover all of them, so a caller can refuse the whole stream
// before writing anything.
func DecodeAll(data []byte) ([]Resource, []error) {
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	var (
		out  []Resource
		errs []error
	)
	for i := 0; ; i++ {
		var node yamlv3.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, &DocumentError{Index: i, Line: 0, Err: fmt.Errorf("%w: %v", ErrMalformed, err)})
			break // the stream cannot be resynchronised after a syntax error
		}
		if len(node.Content) == 0 || (node.Content[0].Kind == yamlv3.ScalarNode && node.Content[0].Tag == "!!null") {
			i--
			continue
		}
		doc, err := yamlv3.Marshal(&node)
		if err != nil {
			errs = append(errs, &DocumentError{Index: i, Line: node.Content[0].Line, Err: fmt.Errorf("%w: %v", ErrMalformed, err)})
			continue
		}
		r, err := Decode(doc)
		if err == nil {
			err = Validate(r)
		}
		if err != nil {
			errs = append(errs, &DocumentError{Index: i, Line: node.Content[0].Line, Err: err})
			continue
		}
		out = append(out, r)
	}
	return out, errs
}

// EncodeJSON writes r as JSON.
func EncodeJSON(r any) ([]byte, error) {
	return json.Marshal(r)
}

// EncodeYAML writes r as YAML.
func EncodeYAML(r any) ([]byte, error) {
	return yaml.Marshal(r)
}

// cleanDecodeError turns the nested messages of sigs.k8s.io/yaml and
// encoding/json into one line a user can act on.
func cleanDecodeError(err error) string {
	s := err.Error()
	for _, p := range []string{"error unmarshaling JSON: ", "while decoding JSON: ", "error converting YAML to JSON: ", "json: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	s = strings.Replace(s, "Go struct field ", "field ", 1)
	return s
}
