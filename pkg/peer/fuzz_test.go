package peer

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzDecodeFacts checks that DecodeFacts never panics, that its errors
// are well formed, and that whatever it accepts is valid, holds no
// private key marker and survives encoding and decoding unchanged. The
// seed corpus is in testdata/fuzz/FuzzDecodeFacts.
func FuzzDecodeFacts(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		facts, err := DecodeFacts(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidFacts) && !errors.Is(err, ErrDocumentTooLarge) {
				t.Fatalf("error %v wraps neither ErrInvalidFacts nor ErrDocumentTooLarge", err)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatalf("error quotes private key material: %v", err)
			}
			return
		}
		if err := facts.Validate(); err != nil {
			t.Fatalf("DecodeFacts accepted a document Validate refuses: %v", err)
		}
		enc, err := encodeFacts(facts)
		if err != nil {
			t.Fatalf("encode an accepted document: %v", err)
		}
		if strings.Contains(string(enc), "PRIVATE KEY") {
			t.Fatalf("accepted document holds a private key marker: %s", enc)
		}
		again, err := DecodeFacts(enc)
		if err != nil {
			t.Fatalf("decode the re-encoded document: %v\n%s", err, enc)
		}
		if diff := cmp.Diff(again, facts); diff != "" {
			t.Fatalf("re-encoded document differs (-got +want):\n%s", diff)
		}
		// Nothing a peer sends may be able to smuggle a line break or a
		// quote into the files its values reach.
		var strs []string
		collectStrings(facts, &strs)
		for _, s := range strs {
			if strings.ContainsAny(s, "\"'\\\n\r\t\x00$`{}") {
				t.Fatalf("accepted value %q holds a character that needs quoting", s)
			}
		}
	})
}

// collectStrings appends every string value of f.
func collectStrings(f Facts, out *[]string) {
	b, _ := json.Marshal(f)
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			*out = append(*out, v)
		case []any:
			for _, e := range v {
				walk(e)
			}
		case map[string]any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	var v any
	_ = json.Unmarshal(b, &v)
	walk(v)
}
