package testutil

import (
	"bytes"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// TestDecodeFluentMessageModes: Message mode with an integer time and an
// option map, and Forward mode, as Fluentd's in_forward takes them.
func TestDecodeFluentMessageModes(t *testing.T) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	// Message mode: [tag, time, record, option].
	enc.Encode([]any{"app", int64(1796511845), map[string]any{"message": "one"}, map[string]any{"chunk": "x"}})
	// Forward mode: [tag, [[time, record], [time, record]]].
	enc.Encode([]any{"app", []any{[]any{int64(1796511846), map[string]any{"message": "two"}}, []any{int64(1796511847), map[string]any{"message": "three"}}}})
	dec := msgpack.NewDecoder(&buf)
	var got []FluentRecord
	for range 2 {
		recs, err := DecodeFluentMessage(dec)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, recs...)
	}
	if len(got) != 3 || got[0].Record["message"] != "one" || !got[0].Time.Equal(time.Unix(1796511845, 0)) ||
		got[2].Tag != "app" || got[2].Record["message"] != "three" {
		t.Fatalf("decoded %+v", got)
	}
	if _, err := DecodeFluentMessage(msgpack.NewDecoder(bytes.NewReader([]byte{0x91, 0xa1, 'x'}))); err == nil {
		t.Fatal("a one-element message decoded")
	}
}
