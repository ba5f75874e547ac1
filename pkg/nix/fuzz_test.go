package nix

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"regexp"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// FuzzNixString: the literal is one line, and reading it back the way the
// Nix lexer does gives the input, with no interpolation and no early end.
func FuzzNixString(f *testing.F) {
	for _, s := range nixStringTable {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lit := NixString(s)
		if strings.ContainsAny(lit, "\n\r") {
			t.Fatalf("NixString(%q) = %q spans lines", s, lit)
		}
		got, err := nixUnescape(lit)
		if err != nil {
			t.Fatalf("NixString(%q) = %q: %v", s, lit, err)
		}
		if got != s {
			t.Fatalf("NixString(%q) = %q reads back as %q", s, lit, got)
		}
	})
}

// FuzzEnsureInclude: the include ends up as the only copy and the last
// setting; every other line is kept byte for byte and in order; no line is
// added but the include (and its comment); a second call changes nothing.
func FuzzEnsureInclude(f *testing.F) {
	f.Add([]byte("substituters = https://x\n"), "!include nixpeer.conf")
	f.Add([]byte("!include nixpeer.conf\r\nsubstituters = x"), "!include nixpeer.conf")
	f.Add([]byte(""), "!include /var/lib/nixpeer/nix.conf")
	f.Add([]byte("a = b\n"+includeMovedComment+"\n!include x\nc = d"), "!include x")
	f.Fuzz(func(t *testing.T, existing []byte, line string) {
		in := bytes.Clone(existing)
		out, changed := EnsureInclude(existing, line)
		if !bytes.Equal(existing, in) {
			t.Fatal("EnsureInclude modified its input")
		}
		want := strings.Trim(line, nixBlanks)
		if strings.ContainsAny(want, "\r\n") || !isSettingLine([]byte(want)) {
			if changed || !bytes.Equal(out, existing) {
				t.Fatalf("not a line %q, yet the file changed", line)
			}
			return
		}
		if changed == bytes.Equal(out, existing) {
			t.Fatalf("changed = %v, but content equal = %v", changed, bytes.Equal(out, existing))
		}
		ours := func(l []byte) bool {
			tl := string(bytes.Trim(l, nixBlanks))
			return tl == want || tl == includeMovedComment
		}
		var inLines, outLines [][]byte
		for l := range bytes.Lines(existing) {
			if !ours(l) {
				inLines = append(inLines, l)
			}
		}
		includes, last := 0, -1
		for i, l := range slices.Collect(bytes.Lines(out)) {
			if string(bytes.Trim(l, nixBlanks)) == want {
				includes++
			}
			if isSettingLine(l) {
				last = i
			}
			if !ours(l) {
				outLines = append(outLines, l)
			}
		}
		if includes != 1 {
			t.Fatalf("%d copies of the include in %q", includes, out)
		}
		if last < 0 || string(bytes.Trim(slices.Collect(bytes.Lines(out))[last], nixBlanks)) != want {
			t.Fatalf("the include is not the last setting line of %q", out)
		}
		if len(inLines) != len(outLines) {
			t.Fatalf("other lines: %d in, %d out:\nin  %q\nout %q", len(inLines), len(outLines), existing, out)
		}
		for i := range inLines {
			a, b := inLines[i], outLines[i]
			if i == len(inLines)-1 && !bytes.HasSuffix(a, []byte("\n")) {
				// The one byte sequence EnsureInclude may add: a line ending.
				switch {
				case bytes.Equal(b, append(bytes.Clone(a), '\n')):
					b = a
				case bytes.Equal(b, append(bytes.Clone(a), '\r', '\n')):
					b = a
				}
			}
			if !bytes.Equal(a, b) {
				t.Fatalf("line %d changed: %q became %q", i, inLines[i], outLines[i])
			}
		}
		again, changed := EnsureInclude(out, line)
		if changed || !bytes.Equal(again, out) {
			t.Fatalf("second call changed %q into %q", out, again)
		}
	})
}

// moduleLineRE is every line RenderModule may write; a value can hold none
// of `"`, `\`, `$`, `{`, `}` or a line break.
var moduleLineRE = regexp.MustCompile(`^(?:` + strings.Join([]string{
	`# [^\n]*`,
	`\{ \.\.\. \}:`, `\{`, `\}`,
	`  nix\.sshServe\.enable = true;`,
	`  nix\.sshServe\.protocol = "(?:ssh|ssh-ng)";`,
	`  (?:nix\.sshServe\.keys|nix\.settings\.(?:secret-key-files|substituters|trusted-public-keys)) = \[(?: \];)?`,
	`    "[A-Za-z0-9+/=:._~?&%@\[\] -]+"`,
	`  \];`,
	`  nix\.settings\.fallback = true;`,
	`  programs\.ssh\.knownHosts\."[A-Za-z0-9._-]+" = \{`,
	`    hostNames = \[`,
	`      "[A-Za-z0-9.:\[\]-]+"`,
	`    \];`,
	`    publicKey = "ssh-ed25519 [A-Za-z0-9+/]+={0,2}";`,
	`  \};`,
}, "|") + `)$`)

// FuzzRenderModule: hostile values are refused; an accepted module has
// only lines of the expected shapes, one per value.
func FuzzRenderModule(f *testing.F) {
	hk := testSSHKey(f, 3)
	sub, err := SubstituterURL("ssh", "10.0.0.2", 22, "/var/lib/nixpeer/ssh/id_ed25519", hk, 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sub, testCacheKey(f, "staging-1", 1), "/var/lib/nixpeer/keys/cache-priv-key.pem", "staging", "[10.0.0.2]:2222", true, "ssh")
	f.Add(`ssh://nix-ssh@h"; x = "`, "k:${x}", "/a\nb", `a"`, "h\n", false, "")
	f.Fuzz(func(t *testing.T, sub, key, path, name, host string, serve bool, protocol string) {
		m := ModuleSettings{
			Serve: serve, Protocol: Protocol(protocol),
			Settings:   Settings{SecretKeyFiles: []string{path}, Substituters: []string{sub}, TrustedPublicKeys: []string{key}},
			KnownHosts: []KnownHost{{Name: name, HostNames: []string{host}, PublicKey: hk}},
		}
		out, err := RenderModule(m)
		if err != nil {
			return
		}
		for _, v := range []string{sub, key, path, name, host, protocol} {
			if strings.ContainsAny(v, "\"\\\n\r\x00") || strings.Contains(v, "${") {
				t.Fatalf("RenderModule accepted the value %q", v)
			}
		}
		lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
		headerLines := strings.Count(moduleHeader, "\n")
		want := headerLines + 3 + 3*3 + 6 // braces, three one-item lists, one known host
		if serve {
			want += 3
		}
		if len(lines) != want {
			t.Fatalf("module has %d lines, want %d:\n%s", len(lines), want, out)
		}
		for _, l := range lines {
			if !moduleLineRE.MatchString(l) {
				t.Fatalf("unexpected line %q in:\n%s", l, out)
			}
		}
	})
}

// nixConfLineRE is every line RenderNixConf may write.
var nixConfLineRE = regexp.MustCompile(`^(?:# [^\n]*|(?:extra-substituters|extra-trusted-public-keys|extra-secret-key-files) = [^\s#"$\\{}]+|fallback = true)$`)

// FuzzRenderNixConf: hostile values are refused; an accepted fragment has
// one line per setting, each of the expected shape.
func FuzzRenderNixConf(f *testing.F) {
	sub, err := SubstituterURL("ssh-ng", "fd00::2", 22, "/k", testSSHKey(f, 3), 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sub, testCacheKey(f, "staging-1", 1), "/var/lib/nixpeer/keys/cache-priv-key.pem", true)
	f.Add("ssh://nix-ssh@h\nsubstituters = x", "k:x y", "/a b", false)
	f.Fuzz(func(t *testing.T, sub, key, path string, fallback bool) {
		out, err := RenderNixConf(Settings{Substituters: []string{sub}, TrustedPublicKeys: []string{key}, SecretKeyFiles: []string{path}, Fallback: fallback})
		if err != nil {
			return
		}
		lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
		want := strings.Count(nixConfHeader, "\n") + 3
		if fallback {
			want++
		}
		if len(lines) != want {
			t.Fatalf("fragment has %d lines, want %d:\n%s", len(lines), want, out)
		}
		for _, l := range lines {
			if !nixConfLineRE.MatchString(l) {
				t.Fatalf("unexpected line %q in:\n%s", l, out)
			}
		}
	})
}

// FuzzParseCacheKey: parsing never panics, what parses encodes back to the
// same text, and an error about a secret key never repeats its data.
func FuzzParseCacheKey(f *testing.F) {
	sk, pk, err := GenerateCacheKey("seed-1")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(sk.Encode()))
	f.Add(pk.String())
	f.Add(string(sk.Encode()[:40]))
	f.Add("k:" + strings.Repeat("A", 86) + "==")
	f.Fuzz(func(t *testing.T, text string) {
		_, data, _ := strings.Cut(text, ":")
		if s, err := ParseSecretKey(text); err == nil {
			if string(s.Encode()) != strings.TrimSuffix(text, "\n") {
				t.Fatalf("secret key %q encodes back as something else", text)
			}
			fp := Fingerprint("/nix/store/x", "sha256:x", 1, nil)
			if !s.Public().Verify(fp, s.Sign(fp)) {
				t.Fatal("a parsed secret key makes signatures its public half refuses")
			}
		} else if len(data) >= 8 && strings.ContainsAny(data, "+/=") && strings.Contains(err.Error(), data) {
			t.Fatalf("error %q repeats secret key data", err)
		}
		if p, err := ParsePublicKey(text); err == nil && p.String() != strings.TrimSuffix(text, "\n") {
			t.Fatalf("public key %q encodes back as %q", text, p.String())
		}
	})
}

// FuzzSubstituterURL: whatever it is given, a URL it returns is one that
// ValidateSubstituter accepts (one line, no quote, space or "${"), and it
// names the address and the host key it was given.
func FuzzSubstituterURL(f *testing.F) {
	key := fuzzEd25519(f)
	f.Add("ssh", "127.0.0.2", 22, "/var/lib/nixpeer/keys/ssh_client_ed25519", key.Marshal())
	f.Add("ssh-ng", "::1", 2222, "/tmp/a b/key", key.Marshal())
	f.Add("ssh", "stage.example.com\n", 22, "/k\"${x}", []byte("garbage"))
	f.Fuzz(func(t *testing.T, protocol, address string, port int, keyPath string, wire []byte) {
		hostKey, err := ssh.ParsePublicKey(wire)
		if err != nil {
			hostKey = nil
		}
		u, err := SubstituterURL(Protocol(protocol), address, port, keyPath, hostKey, 0)
		if err != nil {
			return
		}
		if err := ValidateSubstituter(u); err != nil {
			t.Fatalf("SubstituterURL(%q, %q, %d, %q, 0) = %q, which does not validate: %v", protocol, address, port, keyPath, u, err)
		}
		if strings.ContainsAny(u, " \t\r\n\"'\\$") || !strings.Contains(u, address) {
			t.Fatalf("SubstituterURL(%q, %q, ..., 0) = %q", protocol, address, u)
		}
	})
}

// FuzzRenderAuthorizedKeys: every line it writes is a comment or one
// restricted key line with the protocol's forced command, one per key.
func FuzzRenderAuthorizedKeys(f *testing.F) {
	key := fuzzEd25519(f)
	f.Add("ssh", key.Marshal(), "")
	f.Add("ssh-ng", key.Marshal(), "")
	f.Add("ssh\n", []byte("x"), "")
	f.Add("ssh", key.Marshal(), "prod")
	line := regexp.MustCompile(`^command="(nix-store --serve|nix-daemon --stdio)",restrict ssh-ed25519 [A-Za-z0-9+/]{68}( nixpeer:[a-z0-9-]{1,63}:[A-Za-z0-9+/]{68})?$`)
	f.Fuzz(func(t *testing.T, protocol string, wire []byte, host string) {
		k, err := ssh.ParsePublicKey(wire)
		if err != nil {
			return
		}
		e := AuthorizedKey{Key: k}
		if host != "" {
			e.Host, e.HostKey = host, k
		}
		out, err := RenderAuthorizedKeys(Protocol(protocol), []AuthorizedKey{e, e})
		if err != nil {
			return
		}
		keys := 0
		for _, l := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			if !line.MatchString(l) {
				t.Fatalf("RenderAuthorizedKeys(%q) wrote %q", protocol, l)
			}
			keys++
		}
		if got := RememberedConsumers(out); host != "" && (len(got) != 1 || !bytes.Equal(got[host].HostKey.Marshal(), k.Marshal())) {
			t.Fatalf("RememberedConsumers of %q = %v", out, got)
		}
		if keys != 1 {
			t.Fatalf("RenderAuthorizedKeys of one key twice wrote %d key lines:\n%s", keys, out)
		}
	})
}

func fuzzEd25519(f *testing.F) ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		f.Fatal(err)
	}
	return k
}

// FuzzPinnedHostKeys: whatever a settings file holds (it is shared with
// people, and may be damaged), reading the host keys its substituter URLs
// pin never panics, and every key it returns is an ed25519 key pinned by
// a URL that ValidateSubstituter accepts.
func FuzzPinnedHostKeys(f *testing.F) {
	key := fuzzEd25519(f)
	u, err := SubstituterURL(ProtocolSSH, "127.0.0.2", 22, "/k", key, 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("extra-substituters = " + u + "\n"))
	f.Add([]byte(`  nix.settings.substituters = [ "` + u + `" ];`))
	f.Add([]byte("ssh://nix-ssh@[::1]?base64-ssh-public-host-key=%%%"))
	f.Fuzz(func(t *testing.T, content []byte) {
		for host, k := range PinnedHostKeys(content) {
			if k == nil || k.Type() != ssh.KeyAlgoED25519 || host == "" {
				t.Fatalf("PinnedHostKeys(%q) gave %q → %v", content, host, k)
			}
		}
	})
}

// FuzzKeyGeneration: a name is a generation of a keyName exactly when
// GenerationName gives it back, and the generation is in range.
func FuzzKeyGeneration(f *testing.F) {
	for _, s := range [][2]string{{"stage", "stage"}, {"stage", "stage-g2"}, {"stage", "stage-g02"}, {"stage", "stage-g1"}, {"a-g2", "a-g2-g3"}, {"stage", "stage-g99999"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, keyName, name string) {
		gen, ok := KeyGeneration(keyName, name)
		if !ok {
			if gen != 0 {
				t.Fatalf("KeyGeneration(%q, %q) = %d, false", keyName, name, gen)
			}
			return
		}
		if gen < 1 || gen > MaxKeyGeneration || GenerationName(keyName, gen) != name {
			t.Fatalf("KeyGeneration(%q, %q) = %d, but GenerationName gives %q", keyName, name, gen, GenerationName(keyName, gen))
		}
	})
}

// FuzzToResign: whatever the path infos, only paths with a good signature
// of the old key come out, sorted, each once.
func FuzzToResign(f *testing.F) {
	f.Add(`[{"path":"/nix/store/00000000000000000000000000000001-a","narHash":"sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s","narSize":120,"signatures":["stage:AAAA"],"ultimate":true}]`)
	_, pub, _ := GenerateCacheKey("stage")
	f.Fuzz(func(t *testing.T, raw string) {
		infos, err := ParsePathInfoJSON([]byte(raw))
		if err != nil {
			return
		}
		if got := ToResign(infos, pub, "stage-g2", false); len(got) > 0 {
			t.Fatalf("paths nobody signed with the key came out: %v", got)
		}
	})
}
