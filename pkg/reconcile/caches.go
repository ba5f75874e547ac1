package reconcile

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/bincache"
	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// credsObs is a cache's credentials file as observed.
type credsObs struct {
	Creds bincache.Credentials
	Err   error
}

// postBuildHook is the hook a publishing host's Nix runs after each build.
func postBuildHook(l layout.Layout) string { return l.CachesDir + "/post-build-hook" }

// cacheFiles are the managed files of the cache tier on self.
func cacheFiles(l layout.Layout, self *desired.Host) []string {
	if self.Serve != nil && len(self.Serve.PublishTo) > 0 {
		return []string{postBuildHook(l)}
	}
	return nil
}

// cachesUsed are the caches self reads or publishes to, in file order.
func cachesUsed(self *desired.Host) []string {
	names := slices.Clone(self.ReadCaches)
	if self.Serve != nil {
		for _, c := range self.Serve.PublishTo {
			if !slices.Contains(names, c) {
				names = append(names, c)
			}
		}
	}
	return names
}

// consumersOf are the hosts that trust self's cache key: those that
// substitute from it, and those that read a cache it publishes to.
func consumersOf(file *desired.File, self *desired.Host) []*desired.Host {
	return append(file.Consumers(self.Name), readersOf(file, self)...)
}

// readersOf are the hosts that read a cache self publishes to and do not
// substitute from self.
func readersOf(file *desired.File, self *desired.Host) []*desired.Host {
	if self.Serve == nil {
		return nil
	}
	var out []*desired.Host
	for _, h := range file.Hosts {
		if h != self && !slices.Contains(h.SubstituteFrom, self.Name) &&
			slices.ContainsFunc(h.ReadCaches, func(c string) bool { return slices.Contains(self.Serve.PublishTo, c) }) {
			out = append(out, h)
		}
	}
	return out
}

// publishersOf are the hosts that publish to the caches self reads.
func publishersOf(file *desired.File, self *desired.Host) []*desired.Host {
	var out []*desired.Host
	for _, c := range self.ReadCaches {
		for _, p := range file.Publishers(c) {
			if p != self && !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// cacheSettings are what the cache tier adds to the Nix settings.
type cacheSettings struct {
	substituters, trusted []string
	noNegativeCache       bool
	// hook is the post-build hook's file, written with the settings
	// that name it (before them: Nix fails a build whose hook fails).
	hook *fileWant
}

// planCaches is the binary-cache tier on this host: the reader of the
// caches it substitutes from (at nix.CacheURL, trusting the keys of
// their publishers), and the publisher of those it publishes to, fed by
// a post-build hook. A cache whose credentials cannot be used is reported
// and left out (paths to publish are still queued); nothing is published
// before there is a key to sign with. A store that cannot be reached, or
// publishing that fails, is a warning, not a condition that keeps the
// host from Ready: builds go on, as with a serving peer gone dark.
func (pl *planner) planCaches(signWith []string) (*Resource, cacheSettings, []status.Cache, []string) {
	o, self, l := pl.o, pl.self, pl.o.Layout
	cfg := &bincache.Config{Read: map[string]*bincache.Access{}, Publish: map[string]bincache.PublishTarget{}}
	r := &Resource{Tier: cfg, Status: true}
	names := cachesUsed(self)
	if len(names) == 0 {
		return r, cacheSettings{}, nil, nil
	}
	r.Type, r.Reason = status.CachesReady, "Serving"
	var cs cacheSettings
	var out []status.Cache
	var problems, warnings []string
	publishing := self.Serve != nil && len(self.Serve.PublishTo) > 0
	if publishing {
		cs.hook = &fileWant{path: postBuildHook(l), content: hookScript(o.Executable, l.Socket), mode: 0o755, dirMode: 0o700, ownDir: true}
		if o.SignTarget != "" {
			cfg.Initial = []string{o.SignTarget}
		}
		if len(signWith) == 0 {
			r.Reason = "WaitingForCacheKey"
			problems = append(problems, "publishing waits for the signing key (see CacheKeyReady)")
		}
	}
	if len(self.ReadCaches) > 0 {
		cfg.Listen = fmt.Sprintf("127.0.0.1:%d", self.CachePort)
		cs.noNegativeCache = true
	}
	for _, name := range names {
		c := pl.file.Cache(name)
		st := status.Cache{Name: name, Read: slices.Contains(self.ReadCaches, name), CredentialsFile: l.CacheCredentials(name), Credentials: "ok"}
		st.Publish = publishing && slices.Contains(self.Serve.PublishTo, name)
		creds := o.CacheCreds[name]
		var access *bincache.Access
		if creds.Err != nil {
			st.Credentials, st.Error = bincache.CredentialsProblem(creds.Err), creds.Err.Error()
			r.Reason = "Credentials" + strings.ToUpper(st.Credentials[:1]) + st.Credentials[1:]
			problems = append(problems, fmt.Sprintf("cache %s: %s", name, creds.Err))
		} else {
			access = &bincache.Access{Loc: c.S3, Creds: creds.Creds}
		}
		if st.Read {
			st.URL = nix.CacheURL(self.CachePort, name)
			// The cache is always a substituter: while its store cannot
			// be reached the reader answers every lookup as a miss, at
			// once, so that nothing waits and nothing is restarted.
			cs.substituters = append(cs.substituters, st.URL)
			var keys []string
			for _, pub := range pl.file.Publishers(name) {
				if k := pl.keys[pub.Name]; k.CacheKey != "" {
					keys = append(keys, k.trusted()...)
				}
			}
			if len(keys) == 0 {
				r.Reason = "WaitingForKeys"
				problems = append(problems, fmt.Sprintf("cache %s: the signing keys of its publishers are not known yet", name))
			}
			cs.trusted = append(cs.trusted, keys...)
			cfg.Read[name] = access
			h := o.CacheHealth[name]
			st.Reachable, st.Since = h.Up, h.Since
			switch {
			case access == nil || !h.Checked:
			case h.Rejected:
				st.Credentials, st.Error = "rejected", h.Err
				r.Reason = "CredentialsRejected"
				problems = append(problems, fmt.Sprintf("cache %s: the store refuses this host's credentials (%s); its lookups are answered as misses", name, h.Err))
			case !h.Up:
				st.Error = h.Err
				warnings = append(warnings, fmt.Sprintf("cache %s: its store cannot be reached; its lookups are answered as misses at once, and builds go on: %s", name, h.Err))
			}
		}
		if st.Publish && len(signWith) > 0 {
			cfg.Publish[name] = bincache.PublishTarget{Access: access, KeyFiles: signWith}
		}
		if ps := o.Publishing[name]; st.Publish && ps.Err != "" {
			st.Error = ps.Err
			warnings = append(warnings, fmt.Sprintf("cache %s: publishing fails (%d times in a row; it is retried, and builds go on): %s", name, ps.Failures, ps.Err))
		}
		out = append(out, st)
	}
	switch {
	case len(problems) > 0:
		r.Status, r.Message = false, strings.Join(problems, "; ")
	case len(warnings) > 0:
		r.Reason, r.Message = "Degraded", strings.Join(warnings, "; ")
	default:
		r.Message = fmt.Sprintf("caches %s: in use", strings.Join(names, ", "))
	}
	return r, cs, out, warnings
}

// hookScript is the post-build hook: it hands what Nix built to the
// agent's queue, and never fails or holds up a build.
func hookScript(executable, socket string) []byte {
	return fmt.Appendf(nil, `#!/bin/sh
# Managed by nixpeer: hands the paths Nix built to the agent, which uploads
# them to the caches this host publishes to. It never fails a build.
%s publish-hook --socket %s </dev/null || true
exit 0
`, shellQuote(executable), shellQuote(socket))
}

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
