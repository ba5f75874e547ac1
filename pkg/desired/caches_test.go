package desired

import (
	"slices"
	"testing"
)

// withCache is a valid file with a cache that stage publishes to and
// prod reads after stage; lines 1-11.
func withCache(extra ...string) string {
	return y(append([]string{
		"apiVersion: nixpeer/v1", // 1
		"caches:",                // 2
		`  - {name: fleet, s3: {endpoint: "http://127.0.0.1:8333", bucket: nix}}`, // 3
		"hosts:",                          // 4
		"  - name: stage",                 // 5
		"    address: stage.example.com",  // 6
		"    serve: {publishTo: [fleet]}", // 7
		"  - name: prod",                  // 8
		"    address: prod.example.com",   // 9
	}, extra...)...)
}

func TestParseCaches(t *testing.T) {
	f, err := Parse("test.yaml", []byte(withCache("    substituteFrom: [stage, fleet]")))
	if err != nil {
		t.Fatal(err)
	}
	c := f.Cache("fleet")
	if c == nil || c.S3 != (S3Bucket{Endpoint: "http://127.0.0.1:8333", Bucket: "nix", Region: DefaultRegion}) {
		t.Fatalf("cache fleet = %+v", c)
	}
	prod, stage := f.Host("prod"), f.Host("stage")
	if !slices.Equal(prod.SubstituteFrom, []string{"stage"}) || !slices.Equal(prod.ReadCaches, []string{"fleet"}) {
		t.Errorf("prod substitutes from hosts %q, caches %q; want [stage], [fleet]", prod.SubstituteFrom, prod.ReadCaches)
	}
	if prod.CachePort != DefaultCachePort || stage.CachePort != 0 {
		t.Errorf("cachePort: prod %d (want the default %d), stage %d (want 0: it reads no cache)", prod.CachePort, DefaultCachePort, stage.CachePort)
	}
	if !slices.Equal(stage.Serve.PublishTo, []string{"fleet"}) {
		t.Errorf("stage publishes to %q", stage.Serve.PublishTo)
	}
	if pubs := f.Publishers("fleet"); len(pubs) != 1 || pubs[0] != stage {
		t.Errorf("Publishers(fleet) = %v", pubs)
	}
	if len(f.Consumers("stage")) != 1 || len(f.Consumers("fleet")) != 0 {
		t.Errorf("Consumers: stage %d (want prod), fleet %d (a cache is no host)", len(f.Consumers("stage")), len(f.Consumers("fleet")))
	}

	// A cache alone, a port and a region given.
	f, err = Parse("test.yaml", []byte(withCache("    substituteFrom: [fleet]", "    cachePort: 9000")))
	if err != nil {
		t.Fatal(err)
	}
	if p := f.Host("prod"); len(p.SubstituteFrom) != 0 || p.CachePort != 9000 {
		t.Errorf("prod: hosts %q, cachePort %d", p.SubstituteFrom, p.CachePort)
	}

	// The generation follows the caches.
	a, _ := Parse("a.yaml", []byte(withCache("    substituteFrom: [stage, fleet]")))
	b, _ := Parse("b.yaml", []byte(withCache("    substituteFrom: [stage]")))
	if a.Hash() == b.Hash() {
		t.Error("reading a cache or not has the same hash")
	}
}

func TestParseCacheErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []want
	}{
		{"cache after host order", withCache("    substituteFrom: [fleet, stage]"),
			[]want{w("10:29", `substituteFrom lists host "stage" after the cache "fleet"`, "list the hosts first")}},
		{"unknown cache", withCache("    substituteFrom: [flet]"),
			[]want{w("10:22", `substituteFrom names "flet", which is not a host or cache`, `did you mean "fleet"`)}},
		{"publishTo unknown", y("apiVersion: nixpeer/v1", "hosts:", "  - {name: stage, address: s.example.com, serve: {publishTo: [fleet]}}"),
			[]want{w("3:63", `publishTo names "fleet", which is not a cache`, "add a caches: list")}},
		{"unpublished cache", y("apiVersion: nixpeer/v1", "caches:", `  - {name: fleet, s3: {endpoint: "https://s3.example.com", bucket: nix}}`,
			"hosts:", "  - {name: prod, address: p.example.com, substituteFrom: [fleet]}"),
			[]want{w("5:59", `the cache "fleet", which no host publishes to`, "add publishTo: [fleet]")}},
		{"credentials in endpoint", y("apiVersion: nixpeer/v1", "caches:", `  - {name: fleet, s3: {endpoint: "https://key:secret@s3.example.com", bucket: nix}}`, "hosts:", "  - {name: a, address: a.example.com}"),
			[]want{w("3:34", "holds a user or password", "credentials go in each host's own credentials file")}},
		{"endpoint path", y("apiVersion: nixpeer/v1", "caches:", `  - {name: fleet, s3: {endpoint: "https://s3.example.com/nix", bucket: nix}}`, "hosts:", "  - {name: a, address: a.example.com}"),
			[]want{w("3:34", "has a path", "bucket:")}},
		{"endpoint scheme", y("apiVersion: nixpeer/v1", "caches:", `  - {name: fleet, s3: {endpoint: "s3://nix", bucket: nix}}`, "hosts:", "  - {name: a, address: a.example.com}"),
			[]want{w("3:34", "must start with http:// or https://")}},
		{"bad bucket", y("apiVersion: nixpeer/v1", "caches:", `  - {name: fleet, s3: {endpoint: "https://s3.example.com", bucket: Nix_Cache}}`, "hosts:", "  - {name: a, address: a.example.com}"),
			[]want{w("3:68", `bucket "Nix_Cache" is not an S3 bucket name`)}},
		{"cache named as host", y("apiVersion: nixpeer/v1", "caches:", `  - {name: a, s3: {endpoint: "https://s3.example.com", bucket: nix}}`, "hosts:", "  - {name: a, address: a.example.com}"),
			[]want{w("3:5", `cache "a" has the name of a host`)}},
		{"duplicate cache", y("apiVersion: nixpeer/v1", "caches:", `  - {name: c, s3: {endpoint: "https://s3.example.com", bucket: nix}}`, `  - {name: c, s3: {endpoint: "https://s3.example.com", bucket: nix2}}`, "hosts:", "  - {name: a, address: a.example.com}"),
			[]want{w("4:5", `duplicate cache name "c" (first used at 3:5)`)}},
		{"no s3", y("apiVersion: nixpeer/v1", "caches:", "  - {name: c}", "hosts:", "  - {name: a, address: a.example.com}"),
			[]want{w("3:5", "cache entry has no s3")}},
		{"unknown s3 field", y("apiVersion: nixpeer/v1", "caches:", `  - {name: c, s3: {endpoint: "https://s3.example.com", bucket: nix, secret: x}}`, "hosts:", "  - {name: a, address: a.example.com}"),
			[]want{w("3:69", `unknown field "secret"`, "endpoint, bucket, region")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("test.yaml", []byte(tc.in))
			if err == nil || f != nil {
				t.Fatalf("Parse = %v, %v; want errors %v", f, err, tc.want)
			}
			checkErrors(t, err, tc.want)
		})
	}
}
