package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
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

// Decode parses one YAML or JSON document strictly: an unknown field (names
// match exactly, case included), a duplicate key, a value of the wrong type
// or a second document is an error that names the problem. It does not
// validate; call Validate for that.
func Decode(data []byte) (Resource, error) { return decode(data, "") }

// DecodeAs parses a document that must be of type typ. A document that omits
// type gets typ.
func DecodeAs(data []byte, typ string) (Resource, error) { return decode(data, typ) }

func decode(data []byte, want string) (Resource, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: document is %d bytes, more than the limit of %d", ErrMalformed, len(data), MaxDocumentSize)
	}
	j, err := toJSON(data)
	if err != nil {
		return nil, err
	}
	// One generic decode serves the type, the unknown-field check and the
	// trailing-data check; JSON input skips the YAML parser entirely.
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, cleanDecodeError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: unexpected data after the document", ErrMalformed)
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: a resource must be a mapping of fields", ErrMalformed)
	}
	typ, _ := obj["type"].(string)
	switch {
	case typ == "" && want == "":
		return nil, errNoType
	case typ == "":
		typ = want
	case want != "" && typ != want:
		return nil, fmt.Errorf("%w: type: is %q, expected %q", ErrMalformed, typ, want)
	}
	r, ok := New(typ)
	if !ok {
		return nil, fmt.Errorf("%w: type: unknown type %q", ErrMalformed, typ)
	}
	var unknown []string
	walkUnknown(doc, reflect.TypeOf(r), "", &unknown)
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("%w: unknown field %s", ErrMalformed, strings.Join(unknown, ", "))
	}
	if err := json.Unmarshal(j, r); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, cleanDecodeError(err))
	}
	r.GetMeta().Type = typ
	return r, nil
}

// toJSON returns data as JSON: JSON as it is, YAML converted, refusing
// duplicate keys and more than one document.
func toJSON(data []byte) ([]byte, error) {
	if trimmed := bytes.TrimSpace(data); len(trimmed) > 0 && trimmed[0] == '{' {
		if err := jsonDuplicates(trimmed); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		return trimmed, nil
	}
	if err := singleDocument(data); err != nil {
		return nil, err
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMalformed, cleanDecodeError(err))
	}
	return j, nil
}

// errNoType is Decode's answer to a document without a type.
var errNoType = fmt.Errorf("%w: type: required", ErrMalformed)

// singleDocument refuses a stream of several YAML documents where one is
// expected: the others would be silently ignored, a broken one too.
func singleDocument(data []byte) error {
	if !bytes.Contains(data, []byte("---")) && !bytes.Contains(data, []byte("...")) {
		return nil // no document marker: one document
	}
	dec := yamlv3.NewDecoder(bytes.NewReader(data))
	for n := 0; ; n++ {
		var node yamlv3.Node
		err := dec.Decode(&node)
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil && n == 0:
			return nil // the decoder proper reports the first document's errors
		case err != nil:
			return fmt.Errorf("%w: expected one document, found more (and the next one is not YAML: %v)", ErrMalformed, err)
		case n > 0:
			return fmt.Errorf("%w: expected one document, found several", ErrMalformed)
		}
	}
}

// maxJSONDepth bounds the nesting jsonDuplicates walks, as encoding/json
// bounds what it decodes.
const maxJSONDepth = 10000

// jsonDuplicates refuses a JSON document holding a key twice in one
// object, naming it: encoding/json would keep the last silently, where the
// same document in YAML is refused.
func jsonDuplicates(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	// notJSON ends the walk at the first token that is not JSON (the
	// decoder's More would say "more" for ever after it): json.Unmarshal
	// reports what is wrong.
	notJSON := errors.New("not JSON")
	var walk func(path string, depth int) error
	walk = func(path string, depth int) error {
		if depth > maxJSONDepth {
			return fmt.Errorf("nested more than %d deep", maxJSONDepth)
		}
		tok, err := dec.Token()
		if err != nil {
			return notJSON
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return notJSON
				}
				key, _ := k.(string)
				if seen[key] {
					return fmt.Errorf("%s: duplicate key", path+key)
				}
				seen[key] = true
				if err := walk(path+key+".", depth+1); err != nil {
					return err
				}
			}
			dec.Token() // }
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				if err := walk(fmt.Sprintf("%s[%d].", strings.TrimSuffix(path, "."), i), depth+1); err != nil {
					return err
				}
			}
			dec.Token() // ]
		}
		return nil
	}
	if err := walk("", 0); err != nil && err != notJSON {
		return err
	}
	return nil
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
