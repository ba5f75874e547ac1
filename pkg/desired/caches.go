package desired

import (
	"net/url"
	"regexp"
	"slices"

	"github.com/goccy/go-yaml/ast"

	"github.com/nixpeer/nixpeer/internal/msg"
)

// Cache is a binary cache on an S3-compatible object store: the hosts of
// its publishers' serve.publishTo upload to it, the hosts that name it in
// substituteFrom read it through their agent. Credentials are not in the
// file: each such host reads its own (see layout.Layout.CacheCredentials).
type Cache struct {
	// Name is a lowercase DNS label, unique among hosts and caches.
	Name string
	S3   S3Bucket
	// Pos is where the cache's entry starts in the file.
	Pos Pos `json:"-"`
}

// S3Bucket is where a cache lives on an S3-compatible object store.
type S3Bucket struct {
	// Endpoint is the store's URL: http:// or https://, a host and
	// optionally a port, no path, user, query or fragment.
	Endpoint string
	Bucket   string
	// Region is the region requests are signed for (us-east-1 when none
	// is given, as most S3-compatible stores expect).
	Region string
}

var (
	cacheFields = []string{"name", "s3"}
	s3Fields    = []string{"endpoint", "bucket", "region"}
	bucketRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	regionRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
)

// decodeCaches decodes the caches list.
func decodeCaches(el *errorList, fd field) []*Cache {
	seq, ok := fd.value.(*ast.SequenceNode)
	if !ok || seq == nil {
		wrongType(el, fd)
		return nil
	}
	var out []*Cache
	for _, n := range seq.Values {
		fs, ok := mapping(el, n, "a cache entry", `"- name: fleet" with "s3: {endpoint: ..., bucket: ...}" below it`, cacheFields)
		if !ok {
			continue
		}
		c := &Cache{Pos: fs.pos, S3: S3Bucket{Region: DefaultRegion}}
		if f, ok := fs.fields["name"]; ok {
			if v, ok := str(el, f); ok {
				if r := checkName(v); r != "" {
					el.add(posOf(f.value), "cache name %s %s; use 1-63 lowercase letters, digits and '-', for example \"fleet\"", msg.Quote(v), r)
				} else {
					c.Name = v
				}
			}
		} else {
			el.add(fs.pos, "cache entry has no name; add \"name: NAME\" (a lowercase DNS label such as fleet)")
		}
		if f, ok := fs.fields["s3"]; ok {
			if decodeS3(el, f, c) && c.Name != "" {
				out = append(out, c)
			}
		} else {
			el.add(fs.pos, "cache entry has no s3; add for example %s", help["s3"].example)
		}
	}
	return out
}

// decodeS3 decodes a cache's s3 mapping into c; false when one of its
// fields had an error.
func decodeS3(el *errorList, fd field, c *Cache) bool {
	fs, ok := mapping(el, fd.value, "s3", help["s3"].example, s3Fields)
	if !ok {
		return false
	}
	n0 := len(el.errs)
	if f, ok := fs.fields["endpoint"]; !ok {
		el.add(fs.pos, "s3 has no endpoint; add for example %s", help["endpoint"].example)
	} else if v, ok := str(el, f); ok {
		if r := checkEndpoint(v); r != "" {
			el.add(posOf(f.value), "endpoint %s %s; give the object store's URL, for example %s (credentials go in each host's own credentials file, never here)", msg.Quote(v), r, `"https://s3.example.com"`)
		} else {
			c.S3.Endpoint = v
		}
	}
	if f, ok := fs.fields["bucket"]; !ok {
		el.add(fs.pos, "s3 has no bucket; add for example bucket: nix")
	} else if v, ok := str(el, f); ok {
		if !bucketRE.MatchString(v) {
			el.add(posOf(f.value), "bucket %s is not an S3 bucket name; use 3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit", msg.Quote(v))
		} else {
			c.S3.Bucket = v
		}
	}
	if f, ok := fs.fields["region"]; ok {
		if v, ok := str(el, f); ok {
			if !regionRE.MatchString(v) {
				el.add(posOf(f.value), "region %s is not a region name; use lowercase letters, digits and '-', for example %s", msg.Quote(v), DefaultRegion)
			} else {
				c.S3.Region = v
			}
		}
	}
	return len(el.errs) == n0
}

// checkEndpoint accepts http:// and https:// URLs with a host, an
// optional port and nothing else.
func checkEndpoint(s string) string {
	if len(s) > 2048 {
		return "is too long"
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "is not a URL"
	case u.Scheme != "http" && u.Scheme != "https":
		return "must start with http:// or https://"
	case u.User != nil:
		return "holds a user or password"
	case u.Host == "" || u.Hostname() == "":
		return "has no host"
	case u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.ForceQuery:
		return "has a path, query or fragment (the bucket is given with bucket:)"
	}
	if r := checkAddress(u.Hostname()); r != "" {
		return "has a host that " + r
	}
	return ""
}

// checkCaches checks the references to caches: unique names, not those of
// hosts; publishTo naming caches; substituteFrom naming caches after its
// hosts (Nix asks SSH stores before HTTP caches whatever the order), each
// with a publisher whose key the readers trust. It moves the caches of
// each host's substituteFrom to its ReadCaches, and the hosts to its
// SubstituteFrom. byName holds the host names as written.
func checkCaches(el *errorList, f *File, infos []*hostInfo, byName map[string]int) {
	seen := map[string]*Cache{}
	var caches []*Cache
	for _, c := range f.Caches {
		_, isHost := byName[c.Name]
		switch {
		case seen[c.Name] != nil:
			el.add(c.Pos, "duplicate cache name %q (first used at %s); give every cache its own name", c.Name, seen[c.Name].Pos)
		case isHost:
			el.add(c.Pos, "cache %q has the name of a host; give caches and hosts different names", c.Name)
		default:
			seen[c.Name] = c
			caches = append(caches, c)
		}
	}
	f.Caches = caches
	names := make([]string, len(caches))
	for i, c := range caches {
		names[i] = c.Name
	}
	published := map[string]bool{}
	for _, hi := range infos {
		if s := hi.h.Serve; s != nil {
			for _, it := range hi.publish {
				switch {
				case seen[it.s] == nil:
					el.add(it.pos, "publishTo names %q, which is not a cache in this file; name one of: %s", it.s, orNone(names))
				case slices.Contains(s.PublishTo, it.s):
					el.add(it.pos, "publishTo lists %q twice; remove one", it.s)
				default:
					s.PublishTo = append(s.PublishTo, it.s)
					published[it.s] = true
				}
			}
		}
	}
	for _, hi := range infos {
		h := hi.h
		var lastCache *item
		for _, r := range hi.subs {
			if seen[r.s] == nil {
				if lastCache != nil {
					el.add(r.pos, "substituteFrom lists host %q after the cache %q; list the hosts first: Nix asks SSH stores before HTTP caches whatever the order", r.s, lastCache.s)
				}
				h.SubstituteFrom = append(h.SubstituteFrom, r.s)
				continue
			}
			if slices.Contains(h.ReadCaches, r.s) {
				continue // reported as a duplicate with the hosts
			}
			lastCache = &r
			h.ReadCaches = append(h.ReadCaches, r.s)
			if !published[r.s] {
				el.add(r.pos, "substituteFrom names the cache %q, which no host publishes to; add publishTo: [%s] to the serve of the host that builds for it", r.s, r.s)
			}
		}
		if len(h.ReadCaches) > 0 && h.CachePort == 0 {
			h.CachePort = DefaultCachePort
		}
	}
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "(none: add a caches: list)"
	}
	return shortList(names, 20)
}
