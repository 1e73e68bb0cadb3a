package api

import "testing"

// FuzzDecode feeds arbitrary bytes to the decoder and the validator: they must
// return an error or a resource, never panic, and a resource that validates
// must survive an encode/decode round trip.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		"type: Mesh\nname: default\nmtls: {enabled: true}",
		"type: TrafficRoute\nmesh: default\nname: r\nspec: {destination: {ursa.io/service: b}, split: [{weight: 90, tags: {ursa.io/zone: z}}]}",
		`{"type":"Dataplane","mesh":"m","name":"d","networking":{"address":"10.0.0.1","inbound":[{"port":1,"tags":{"ursa.io/service":"s"}}]}}`,
		"type: Secret\nmesh: m\nname: s\ndata: AAEC",
		"type: Zone\nname: z\nenabled: false\n---\ntype: Mesh\nname: m",
		"&a [*a, *a]",
		"type: TrafficRoute\nmesh: m\nname: r\nspec: {destination: {ursa.io/service: b}, split: [{weight: 1}], http: [{match: {path: {regex: '^/a.*'}, method: GET, headers: {x-c: {present: true}}}, split: [{weight: 1, tags: {v: '2'}}], modify: {requestHeaders: {set: {x-a: b}, remove: [x-b]}}}]}",
		"type: Retry\nmesh: m\nname: r\nspec: {sources: [{match: {a: b}}], destinations: [{match: {a: b}}], http: {numRetries: 3, perTryTimeout: 200ms, retryOn: [5xx], backOff: {base: 25ms, max: 1s}}}",
		"type: TrafficLog\nmesh: m\nname: l\nspec: {sources: [{match: {a: b}}], destinations: [{match: {a: b}}], backend: {tcp: {address: 'c:24224'}}, format: '%REQ(:PATH)% %RESPONSE_CODE%'}",
		"type: Timeout\nmesh: m\nname: t\nspec: {sources: [{match: {a: b}}], destinations: [{match: {a: b}}], connectTimeout: 1h2m3.5s}",
		"type: UserTokenPublicKey\nname: user-token-signing-key.1\npublicKeyPEM: |\n  -----BEGIN PUBLIC KEY-----\n  MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n  -----END PUBLIC KEY-----\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		DecodeAll(data)
		r, err := Decode(data)
		if err != nil {
			return
		}
		if Validate(r) != nil {
			return
		}
		b, err := EncodeJSON(r)
		if err != nil {
			t.Fatalf("encode valid resource: %v", err)
		}
		r2, err := Decode(b)
		if err != nil {
			t.Fatalf("decode of our own encoding %s: %v", b, err)
		}
		if err := Validate(r2); err != nil {
			t.Fatalf("re-decoded resource no longer valid: %v", err)
		}
	})
}
