package peer

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// fieldNames are the JSON names of the fields of Facts, ServeFacts,
// AuthorizedFact and ServeCheck. No two of them differ only in case, so a
// key found here that encoding/json matched to a field is that field's
// exact name.
var fieldNames = map[string]bool{
	"version": true, "name": true, "address": true, "generation": true,
	"observedGeneration": true, "ready": true, "hostKeys": true,
	"clientKey": true, "serve": true, "protocol": true, "cacheKey": true,
	"authorized": true, "host": true, "fingerprint": true, "applied": true,
	"check": true, "serving": true, "reason": true, "nextCacheKey": true,
	"trustedCacheKeys": true, "nextHostKey": true, "nextHostKeyProof": true,
	"acceptedHostKeys": true,
}

// checkKeys walks the JSON in data and refuses an object key that is not
// a field name spelled exactly, or a key given twice in one object:
// encoding/json would match keys regardless of case and let the last of
// two win, and a document should mean the same to every reader. data must
// already have parsed as JSON (which bounds its nesting).
func checkKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return walkValue(dec)
}

func walkValue(dec *json.Decoder) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	d, ok := t.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		seen := map[string]bool{}
		for dec.More() {
			t, err := dec.Token()
			if err != nil {
				return err
			}
			k, _ := t.(string)
			switch {
			case !fieldNames[k]:
				return fmt.Errorf("unknown field %s", quoteShort(k))
			case seen[k]:
				return fmt.Errorf("field %q given twice", k)
			}
			seen[k] = true
			if err := walkValue(dec); err != nil {
				return err
			}
		}
	case '[':
		for dec.More() {
			if err := walkValue(dec); err != nil {
				return err
			}
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
}
