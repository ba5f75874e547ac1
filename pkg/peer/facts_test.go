package peer

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nixpeer/nixpeer/pkg/nix"
)

func TestValidate(t *testing.T) {
	host := newSigner(t).PublicKey()
	base := validFacts(t, host)
	if err := base.Validate(); err != nil {
		t.Fatalf("valid facts: %v", err)
	}
	line := keyLine(host)
	b64 := strings.TrimPrefix(line, "ssh-ed25519 ")
	rsaLike := "ssh-rsa " + b64
	// The same key with the padding bits of its last base64 character
	// set: decodes leniently to the same bytes, but is not canonical.
	blob, _ := base64.StdEncoding.DecodeString(b64)
	nonCanonical := "ssh-ed25519 " + base64.StdEncoding.EncodeToString(blob)[:len(b64)-2] + "B="
	_, secret, _ := ed25519.GenerateKey(rand.Reader)
	nixSecret := "stage-1:" + base64.StdEncoding.EncodeToString(secret)
	pemKey := privateKeyPEM(t)

	tests := []struct {
		name   string
		mutate func(f *Facts)
		want   string // in the error; "" means valid
	}{
		{"valid", func(f *Facts) {}, ""},
		{"no serve", func(f *Facts) { f.Serve = nil }, ""},
		{"no client key yet", func(f *Facts) { f.ClientKey = "" }, ""},
		{"ipv4", func(f *Facts) { f.Address = "192.0.2.1" }, ""},
		{"ipv6", func(f *Facts) { f.Address = "2001:db8::1" }, ""},
		{"ssh protocol", func(f *Facts) { f.Serve.Protocol = "ssh" }, ""},
		{"nothing authorized", func(f *Facts) { f.Serve.Authorized = nil }, ""},
		{"version 0", func(f *Facts) { f.Version = 0 }, "version 0 is not supported"},
		{"version 2", func(f *Facts) { f.Version = 2 }, "version 2 is not supported"},
		{"empty name", func(f *Facts) { f.Name = "" }, `name "" is empty`},
		{"upper-case name", func(f *Facts) { f.Name = "Stage" }, `name "Stage" has upper-case letters`},
		{"name with newline", func(f *Facts) { f.Name = "stage\nevil" }, `name "stage\nevil"`},
		{"long name", func(f *Facts) { f.Name = strings.Repeat("a", 64) }, "name (a value of 64 bytes) is 64 characters long; the limit is 63"},
		{"empty address", func(f *Facts) { f.Address = "" }, "address \"\" is empty"},
		{"address with port", func(f *Facts) { f.Address = "stage:22" }, `address "stage:22" includes a port`},
		{"address bracketed", func(f *Facts) { f.Address = "[2001:db8::1]" }, "has brackets"},
		{"address IPv4-mapped", func(f *Facts) { f.Address = "::ffff:192.0.2.1" }, "IPv4-mapped"},
		{"address with zone", func(f *Facts) { f.Address = "fe80::1%eth0" }, "IPv6 zone"},
		{"address with user", func(f *Facts) { f.Address = "root@stage" }, "without a user name"},
		{"address with space", func(f *Facts) { f.Address = "stage example" }, `address "stage example" contains a space`},
		{"address bad ipv4", func(f *Facts) { f.Address = "192.0.2.256" }, "looks like an IPv4 address"},
		{"address option", func(f *Facts) { f.Address = "-oProxyCommand=x" }, "starts or ends with '-'"},
		{"address long", func(f *Facts) { f.Address = strings.Repeat("a", 254) }, "address (a value of 254 bytes) is 254 characters long"},
		{"negative generation", func(f *Facts) { f.Generation = -1 }, "negative"},
		{"no host keys", func(f *Facts) { f.HostKeys = nil }, "hostKeys is empty"},
		{"too many host keys", func(f *Facts) {
			for len(f.HostKeys) <= maxListLen {
				f.HostKeys = append(f.HostKeys, line)
			}
		}, "the limit is 256"},
		{"duplicate host key", func(f *Facts) { f.HostKeys = []string{line, line} }, "hostKeys[1] repeats"},
		{"host key comment", func(f *Facts) { f.HostKeys = []string{line + " root@stage"} }, "hostKeys[0]: public key has a comment"},
		{"host key rsa", func(f *Facts) { f.HostKeys = []string{rsaLike} }, `hostKeys[0]: public key has key type "ssh-rsa"; want ssh-ed25519`},
		{"host key two spaces", func(f *Facts) { f.HostKeys = []string{"ssh-ed25519  " + b64} }, "hostKeys[0]: public key has two spaces in a row"},
		{"host key newline", func(f *Facts) { f.HostKeys = []string{line + "\nssh-ed25519 " + b64} }, "hostKeys[0]: public key holds a line break"},
		{"host key not canonical", func(f *Facts) { f.HostKeys = []string{nonCanonical} }, "canonical"},
		{"host key garbage", func(f *Facts) { f.HostKeys = []string{"ssh-ed25519 AAAA"} }, "hostKeys[0]: public key does not decode"},
		{"host key options", func(f *Facts) { f.HostKeys = []string{`command="sh" ` + line} }, "hostKeys[0]: public key has key type"},
		{"client key bad", func(f *Facts) { f.ClientKey = "ssh-ed25519" }, "clientKey: public key has one field only"},
		{"client key PEM", func(f *Facts) { f.ClientKey = pemKey }, "clientKey holds private key material"},
		{"host key PEM", func(f *Facts) { f.HostKeys = []string{pemKey} }, "hostKeys[0] holds private key material"},
		{"name PEM", func(f *Facts) { f.Name = pemKey }, "name holds private key material"},
		{"address PEM", func(f *Facts) { f.Address = pemKey }, "address holds private key material"},
		{"protocol PEM", func(f *Facts) { f.Serve.Protocol = nix.Protocol(pemKey) }, "serve.protocol holds private key material"},
		{"cache key PEM", func(f *Facts) { f.Serve.CacheKey = pemKey }, "serve.cacheKey holds private key material"},
		{"authorized host PEM", func(f *Facts) { f.Serve.Authorized[0].Host = pemKey }, "serve.authorized[0].host holds private key material"},
		{"fingerprint PEM", func(f *Facts) { f.Serve.Authorized[0].Fingerprint = pemKey }, "serve.authorized[0].fingerprint holds private key material"},
		{"marker only", func(f *Facts) { f.Name = "PRIVATE KEY" }, "name holds private key material"},
		{"nix secret key", func(f *Facts) { f.Serve.CacheKey = nixSecret }, "SECRET key"},
		{"protocol http", func(f *Facts) { f.Serve.Protocol = "http" }, `serve.protocol "http"`},
		{"protocol empty", func(f *Facts) { f.Serve.Protocol = "" }, "serve.protocol"},
		{"cache key no name", func(f *Facts) { f.Serve.CacheKey = strings.SplitN(f.Serve.CacheKey, ":", 2)[1] }, "serve.cacheKey"},
		{"cache key short", func(f *Facts) { f.Serve.CacheKey = "stage-1:AAAA" }, "serve.cacheKey"},
		{"cache key space", func(f *Facts) { f.Serve.CacheKey = "stage 1:" + strings.SplitN(f.Serve.CacheKey, ":", 2)[1] }, "serve.cacheKey"},
		{"cache key not canonical", func(f *Facts) { f.Serve.CacheKey = "s:" + strings.Repeat("A", 42) + "B=" }, "invalid base64"},
		{"cache key newline", func(f *Facts) { f.Serve.CacheKey += "\n" }, "serve.cacheKey is not a binary-cache public key"},
		{"cache key long name", func(f *Facts) {
			f.Serve.CacheKey = strings.Repeat("a", 300) + ":" + strings.SplitN(f.Serve.CacheKey, ":", 2)[1]
		}, "the limit is 300"},
		{"next cache key PEM", func(f *Facts) { f.Serve.NextCacheKey = pemKey }, "serve.nextCacheKey holds private key material"},
		{"next cache key secret", func(f *Facts) { f.Serve.NextCacheKey = nixSecret }, "serve.nextCacheKey is a binary-cache SECRET key"},
		{"next cache key same name", func(f *Facts) { f.Serve.NextCacheKey = f.Serve.CacheKey }, "serve.nextCacheKey has the name of serve.cacheKey"},
		{"trusted cache key secret", func(f *Facts) { f.TrustedCacheKeys = []string{nixSecret} }, "trustedCacheKeys[0] is a binary-cache SECRET key"},
		{"trusted cache key PEM", func(f *Facts) { f.TrustedCacheKeys = []string{pemKey} }, "trustedCacheKeys[0] holds private key material"},
		{"trusted cache keys many", func(f *Facts) { f.TrustedCacheKeys = slices.Repeat([]string{f.Serve.CacheKey}, 257) }, "trustedCacheKeys has 257 entries"},
		{"next host key alone", func(f *Facts) { f.NextHostKeyProof = "" }, "nextHostKey and nextHostKeyProof come together"},
		{"next host key PEM", func(f *Facts) { f.NextHostKey = pemKey }, "nextHostKey holds private key material"},
		{"next host key current", func(f *Facts) { f.NextHostKey = f.HostKeys[0] }, "nextHostKey is one of hostKeys"},
		{"next host key proof long", func(f *Facts) { f.NextHostKeyProof = strings.Repeat("A", 516) }, "nextHostKeyProof is 516 characters long"},
		{"next host key proof not base64", func(f *Facts) { f.NextHostKeyProof = "A!==" }, "nextHostKeyProof is not canonical base64"},
		{"accepted host key rsa", func(f *Facts) { f.AcceptedHostKeys = []string{"ssh-rsa AAAA"} }, "acceptedHostKeys[0]"},
		{"fingerprint md5", func(f *Facts) { f.Serve.Authorized[0].Fingerprint = "MD5:00:11" }, "serve.authorized[0].fingerprint"},
		{"fingerprint padded", func(f *Facts) { f.Serve.Authorized[0].Fingerprint += "=" }, "serve.authorized[0].fingerprint"},
		{"fingerprint not canonical", func(f *Facts) { f.Serve.Authorized[0].Fingerprint = "SHA256:" + strings.Repeat("A", 42) + "B" }, "canonical"},
		{"authorized host bad", func(f *Facts) { f.Serve.Authorized[0].Host = "prod;rm" }, "serve.authorized[0].host"},
		{"authorized duplicate", func(f *Facts) { f.Serve.Authorized = append(f.Serve.Authorized, f.Serve.Authorized[0]) }, "serve.authorized[1] repeats"},
		{"check serving", func(f *Facts) { f.Serve.Check = &ServeCheck{Serving: true} }, ""},
		{"check failing", func(f *Facts) { f.Serve.Check = &ServeCheck{Reason: "wrong protocol"} }, ""},
		{"check failing without reason", func(f *Facts) { f.Serve.Check = &ServeCheck{} }, "serve.check.reason \"\" is not"},
		{"check reason while serving", func(f *Facts) { f.Serve.Check = &ServeCheck{Serving: true, Reason: "timeout"} }, "given while serving"},
		{"check reason odd", func(f *Facts) { f.Serve.Check = &ServeCheck{Reason: "time\nout"} }, "not a few lowercase words"},
		{"check reason long", func(f *Facts) { f.Serve.Check = &ServeCheck{Reason: "a b c d e"} }, "not a few lowercase words"},
		{"a thousand consumers", func(f *Facts) {
			for i := len(f.Serve.Authorized); i < 1000; i++ {
				f.Serve.Authorized = append(f.Serve.Authorized, AuthorizedFact{Host: fmt.Sprintf("prod-%d", i), Fingerprint: f.Serve.Authorized[0].Fingerprint})
			}
		}, ""},
		{"too many authorized", func(f *Facts) {
			for len(f.Serve.Authorized) <= maxAuthorized {
				f.Serve.Authorized = append(f.Serve.Authorized, f.Serve.Authorized[0])
			}
		}, "the limit is 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := clone(base)
			tt.mutate(&f)
			err := f.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tt.want != "" && err == nil:
				t.Fatalf("valid, want an error saying %q", tt.want)
			case err != nil && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("got %q, want it to say %q", err, tt.want)
			}
			if err != nil {
				for _, secret := range []string{"PRIVATE KEY", "b3BlbnNzaC1rZXktdjE", base64.StdEncoding.EncodeToString(secret)[:20]} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error quotes private key material: %v", err)
					}
				}
			}
		})
	}
}

// clone deep-copies f.
func clone(f Facts) Facts {
	f.HostKeys = append([]string(nil), f.HostKeys...)
	if f.Serve != nil {
		s := *f.Serve
		s.Authorized = append([]AuthorizedFact(nil), s.Authorized...)
		f.Serve = &s
	}
	return f
}

// TestValidateRefusesPrivateKeyAnywhere puts a private key in every
// string of a document, in several forms.
func TestValidateRefusesPrivateKeyAnywhere(t *testing.T) {
	pemKey := privateKeyPEM(t)
	base := validFacts(t, newSigner(t).PublicKey())
	fields := map[string]func(f *Facts, v string){
		"name":        func(f *Facts, v string) { f.Name = v },
		"address":     func(f *Facts, v string) { f.Address = v },
		"hostKeys":    func(f *Facts, v string) { f.HostKeys = append(f.HostKeys, v) },
		"clientKey":   func(f *Facts, v string) { f.ClientKey = v },
		"protocol":    func(f *Facts, v string) { f.Serve.Protocol = nix.Protocol(v) },
		"cacheKey":    func(f *Facts, v string) { f.Serve.CacheKey = v },
		"host":        func(f *Facts, v string) { f.Serve.Authorized[0].Host = v },
		"fingerprint": func(f *Facts, v string) { f.Serve.Authorized[0].Fingerprint = v },
	}
	body := strings.Join(strings.Split(pemKey, "\n")[1:3], "")
	forms := map[string]string{
		"pem":         pemKey,
		"pem in line": "ssh-ed25519 " + pemKey,
		"marker":      "-----BEGIN OPENSSH PRIVATE KEY-----",
		"body only":   body,
		"body as key": "ssh-ed25519 " + body,
	}
	for field, set := range fields {
		for form, v := range forms {
			f := clone(base)
			set(&f, v)
			err := f.Validate()
			if err == nil {
				t.Errorf("%s holding a private key (%s) is valid", field, form)
				continue
			}
			if strings.Contains(err.Error(), body[:16]) || strings.Contains(err.Error(), "BEGIN") {
				t.Errorf("%s (%s): error quotes the key: %v", field, form, err)
			}
			if _, err := encodeFacts(f); err == nil {
				t.Errorf("%s (%s): encodeFacts accepted it", field, form)
			}
		}
	}
}

func TestDecodeFacts(t *testing.T) {
	f := validFacts(t, newSigner(t).PublicKey())
	doc, err := encodeFacts(f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeFacts(doc)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, f); diff != "" {
		t.Errorf("round trip mismatch (-got +want):\n%s", diff)
	}
	s := string(doc)
	tests := []struct {
		name, doc, want string
	}{
		{"trailing data", s + "{}", "after top-level value"},
		{"two documents", s + s, "after top-level value"},
		{"array", "[" + s + "]", "not a JSON object"},
		{"null", "null", "no version"},
		{"empty", "", "not a JSON object"},
		{"keepalive", "{}", "no version"},
		{"version string", strings.Replace(s, `"version":1`, `"version":"1"`, 1), "not a JSON object"},
		{"version float", strings.Replace(s, `"version":1`, `"version":1.5`, 1), "not a JSON object"},
		{"version 2", strings.Replace(s, `"version":1`, `"version":2`, 1), "version 2 is not supported"},
		{"field case", strings.Replace(s, `"name":`, `"Name":`, 1), `unknown field "Name"`},
		{"field twice", strings.Replace(s, `"ready":true`, `"ready":false,"ready":true`, 1), `field "ready" given twice`},
		{"nested field twice", strings.Replace(s, `"applied":true`, `"applied":true,"applied":false`, 1), `field "applied" given twice`},
		{"unknown field", strings.Replace(s, `"ready":`, `"x":1,"ready":`, 1), `unknown field "x"`},
		{"field of another level", strings.Replace(s, `"ready":`, `"applied":true,"ready":`, 1), `unknown field "applied"`},
		{"wrong type", strings.Replace(s, `"ready":true`, `"ready":"yes"`, 1), "invalid facts"},
		{"generation overflow", strings.Replace(s, `"generation":3`, `"generation":99999999999999999999`, 1), "invalid facts"},
		{"private key in unknown field", strings.Replace(s, `"ready":`, `"key":"-----BEGIN OPENSSH PRIVATE KEY-----","ready":`, 1), `unknown field "key"`},
		{"too large", `{"version":1,"name":"` + strings.Repeat("a", MaxDocumentSize) + `"}`, "document too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeFacts([]byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error saying %q", err, tt.want)
			}
			if !errors.Is(err, ErrInvalidFacts) && !errors.Is(err, ErrDocumentTooLarge) {
				t.Errorf("error %v wraps neither ErrInvalidFacts nor ErrDocumentTooLarge", err)
			}
		})
	}
	if _, err := DecodeFacts([]byte(" \n" + s + " \n")); err != nil {
		t.Errorf("white space around a document: %v", err)
	}
}

// TestFieldNames keeps fieldNames in step with the structs' JSON tags.
func TestFieldNames(t *testing.T) {
	want := map[string]bool{}
	for _, typ := range []reflect.Type{reflect.TypeFor[Facts](), reflect.TypeFor[ServeFacts](), reflect.TypeFor[AuthorizedFact](), reflect.TypeFor[ServeCheck]()} {
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			want[name] = true
		}
	}
	if diff := cmp.Diff(fieldNames, want); diff != "" {
		t.Errorf("fieldNames mismatch (-got +want):\n%s", diff)
	}
	lower := map[string]string{}
	for n := range want {
		if other, ok := lower[strings.ToLower(n)]; ok {
			t.Errorf("field names %q and %q differ only in case", n, other)
		}
		lower[strings.ToLower(n)] = n
	}
}
