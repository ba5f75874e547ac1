package desired

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml/ast"

	"github.com/nixpeer/nixpeer/internal/msg"
	"github.com/nixpeer/nixpeer/pkg/nix"
)

// Allowed fields of each mapping, in the order messages list them.
var (
	fileFields  = []string{"apiVersion", "trust", "caches", "hosts"}
	hostFields  = []string{"name", "address", "peerPort", "sshPort", "cachePort", "hostKey", "clientKey", "platform", "apply", "sshdReload", "nixosModuleFile", "serve", "substituteFrom"}
	serveFields = []string{"protocol", "keyName", "keyGeneration", "publicKey", "signClosure", "publishTo"}
	trustFields = []string{"mode", "hostCAs"}
)

// fieldHelp says what a field must hold and shows a correct line, for the
// "what would be right" half of messages. text is true for fields that
// hold one string.
type fieldHelp struct {
	text          bool
	want, example string
}

var help = map[string]fieldHelp{
	"apiVersion":      {true, "the string " + APIVersion, "apiVersion: " + APIVersion},
	"trust":           {true, "approve, tofu or pinned, or a mapping with mode: ca and hostCAs", "trust: approve"},
	"mode":            {true, "approve, tofu, pinned or ca", "mode: ca"},
	"hostCAs":         {false, "a list of SSH public key lines", `hostCAs: ["ssh-ed25519 AAAA... fleet-ca"]`},
	"hosts":           {false, "a list of host mappings", "hosts: followed by lines like \"  - name: web1\""},
	"name":            {true, "a host name (a lowercase DNS label)", "name: web1"},
	"address":         {true, "a DNS host name or an IP address", "address: web1.example.com"},
	"peerPort":        {false, "a port number 1-65535", fmt.Sprintf("peerPort: %d", DefaultPeerPort)},
	"sshPort":         {false, "a port number 1-65535", fmt.Sprintf("sshPort: %d", DefaultSSHPort)},
	"hostKey":         {true, "an SSH public key line", `hostKey: "ssh-ed25519 AAAA..."`},
	"clientKey":       {true, "an SSH public key line", `clientKey: "ssh-ed25519 AAAA..."`},
	"publicKey":       {true, "a binary-cache public key NAME:BASE64", `publicKey: "cache.example.com:BASE64..."`},
	"platform":        {true, "one of nixos, nixos-module, nix", "platform: nixos"},
	"apply":           {false, "a list of strings: a command and its arguments", "apply: [systemctl, restart, nix-daemon.service]"},
	"sshdReload":      {false, "a list of strings: a command and its arguments", "sshdReload: [systemctl, reload, sshd.service]"},
	"nixosModuleFile": {true, "an absolute path", "nixosModuleFile: " + DefaultNixOSModuleFile},
	"serve":           {false, "a mapping", "serve: {} (or serve: {protocol: ssh-ng})"},
	"substituteFrom":  {false, "a list of host names, then cache names", "substituteFrom: [stage, fleet]"},
	"cachePort":       {false, "a port number 1-65535", fmt.Sprintf("cachePort: %d", DefaultCachePort)},
	"publishTo":       {false, "a list of cache names", "publishTo: [fleet]"},
	"caches":          {false, "a list of cache mappings", `caches: followed by lines like "  - name: fleet"`},
	"s3":              {false, "a mapping with endpoint, bucket and region", `s3: {endpoint: "https://s3.example.com", bucket: nix, region: us-east-1}`},
	"endpoint":        {true, "an http:// or https:// URL of the object store, without a path", `endpoint: "https://s3.example.com"`},
	"bucket":          {true, "an S3 bucket name", "bucket: nix"},
	"region":          {true, "an S3 region name", "region: " + DefaultRegion},
	"protocol":        {true, "ssh or ssh-ng", "protocol: ssh"},
	"keyName":         {true, "a binary-cache key name", "keyName: cache.example.com"},
	"keyGeneration":   {false, fmt.Sprintf("a number 1-%d", nix.MaxKeyGeneration), "keyGeneration: 2"},
	"signClosure":     {true, "an absolute store path", "signClosure: " + DefaultSignClosure},
}

// hostInfo is a decoded host with the positions the cross-host checks
// need. h holds whatever could be decoded: its Name and Address only
// when present and well formed.
type hostInfo struct {
	h            *Host
	rawName      string
	namePos      Pos
	addrPos      Pos
	hostKeyGiven bool
	hostKeyPos   Pos
	serveGiven   bool
	keyNamePos   Pos
	publicKeyPos Pos
	keyNameGiven bool
	subs         []item // the valid substituteFrom entries
	publish      []item // the valid publishTo entries
}

// decodeFile decodes the top-level mapping and every host.
func decodeFile(el *errorList, root ast.Node) (*File, []*hostInfo) {
	fs, ok := mapping(el, root, "the file", "\"apiVersion: "+APIVersion+"\" followed by \"hosts:\"", fileFields)
	if !ok {
		return nil, nil
	}
	f := &File{APIVersion: APIVersion, Trust: TrustApprove}
	if fd, ok := fs.fields["apiVersion"]; ok {
		if v, ok := str(el, fd); ok && v != APIVersion {
			el.add(posOf(fd.value), "apiVersion %s is not supported; this nixpeer reads \"apiVersion: %s\"", msg.Quote(v), APIVersion)
		}
	} else {
		el.add(fs.pos, "the file has no apiVersion; add \"apiVersion: %s\" as its first line", APIVersion)
	}
	if fd, ok := fs.fields["trust"]; ok {
		decodeTrust(el, fd, f)
	}
	if fd, ok := fs.fields["caches"]; ok {
		f.Caches = decodeCaches(el, fd)
	}
	fd, ok := fs.fields["hosts"]
	if !ok {
		el.add(fs.pos, "the file has no hosts; add a hosts: list with at least one \"- name: NAME\" and \"address: ADDRESS\" entry")
		return f, nil
	}
	seq, ok := fd.value.(*ast.SequenceNode)
	if !ok || seq == nil {
		wrongType(el, fd)
		return f, nil
	}
	if len(seq.Values) == 0 {
		el.add(posOf(seq), "hosts is empty; list at least one host, for example \"- {name: web1, address: web1.example.com}\"")
		return f, nil
	}
	var infos []*hostInfo
	for _, n := range seq.Values {
		if hi := decodeHost(el, n); hi != nil {
			infos = append(infos, hi)
			f.Hosts = append(f.Hosts, hi.h)
		}
	}
	return f, infos
}

// decodeTrust decodes trust: a mode (approve, tofu, pinned), or a mapping
// {mode: ca, hostCAs: [...]} naming the CAs of the hosts' certificates.
func decodeTrust(el *errorList, fd field, f *File) {
	const example = `trust: {mode: ca, hostCAs: ["ssh-ed25519 AAAA... fleet-ca"]}`
	if _, isMap := fd.value.(*ast.MappingNode); !isMap {
		if s, ok := fd.value.(*ast.StringNode); ok && s != nil && s.Value == string(TrustCA) {
			el.add(posOf(fd.value), "trust ca needs the CAs' public keys; write %s", example)
			return
		}
		if v, ok := enum(el, fd, []string{string(TrustApprove), string(TrustTOFU), string(TrustPinned)}); ok {
			f.Trust = Trust(v)
		}
		return
	}
	tfs, ok := mapping(el, fd.value, "trust", example, trustFields)
	if !ok {
		return
	}
	md, ok := tfs.fields["mode"]
	if !ok {
		el.add(tfs.pos, "trust has no mode; for example %s", example)
		return
	}
	v, ok := enum(el, md, []string{string(TrustApprove), string(TrustTOFU), string(TrustPinned), string(TrustCA)})
	if !ok {
		return
	}
	f.Trust = Trust(v)
	cd, given := tfs.fields["hostCAs"]
	switch {
	case given && f.Trust != TrustCA:
		el.add(cd.keyPos, "hostCAs is read only with mode: ca; remove it, or set mode: ca")
	case given:
		for _, it := range stringList(el, cd) {
			k, r := normalizeHostKey(it.s)
			if r != "" {
				el.add(it.pos, "hostCAs entry %s; give the CA's public key line, as in the .pub file ssh-keygen made", r)
				continue
			}
			f.HostCAs = append(f.HostCAs, k)
		}
	}
	if f.Trust == TrustCA && len(f.HostCAs) == 0 {
		el.add(tfs.pos, "trust mode ca needs hostCAs: the public keys of the CAs that sign the hosts' SSH host certificates; for example %s", example)
	}
}

// decodeHost decodes one entry of hosts, filling defaults.
func decodeHost(el *errorList, n ast.Node) *hostInfo {
	fs, ok := mapping(el, n, "a host entry", "\"- name: web1\" with \"address: web1.example.com\" below it", hostFields)
	if !ok {
		return nil
	}
	h := &Host{Pos: fs.pos, PeerPort: DefaultPeerPort, SSHPort: DefaultSSHPort, Platform: PlatformNixOS, NixOSModuleFile: DefaultNixOSModuleFile}
	hi := &hostInfo{h: h}

	if fd, ok := fs.fields["name"]; ok {
		hi.namePos = posOf(fd.value)
		if v, ok := str(el, fd); ok {
			hi.rawName = v
			if r := checkName(v); r != "" {
				el.add(hi.namePos, "host name %s %s; use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit, for example \"web1\" or \"yourapp-stage\"", msg.Quote(v), r)
			} else {
				h.Name = v
			}
		}
	} else {
		el.add(fs.pos, "host entry has no name; add \"name: NAME\" (a lowercase DNS label such as web1)")
	}
	who := "this host"
	if h.Name != "" {
		who = fmt.Sprintf("host %q", h.Name)
	}

	if fd, ok := fs.fields["address"]; ok {
		hi.addrPos = posOf(fd.value)
		if v, ok := str(el, fd); ok {
			if r := checkAddress(v); r != "" {
				el.add(hi.addrPos, "address %s %s; use a DNS host name (stage.example.com), an IPv4 address (192.0.2.10) or an IPv6 address without brackets or port (2001:db8::10)", msg.Quote(v), r)
			} else {
				h.Address = v
			}
		}
	} else {
		el.add(fs.pos, "%s has no address; add \"address: ADDRESS\" (the DNS name or IP address its peers reach it at)", who)
	}

	ports := map[string]*int{"peerPort": &h.PeerPort, "sshPort": &h.SSHPort, "cachePort": &h.CachePort}
	for _, key := range []string{"peerPort", "sshPort", "cachePort"} {
		if fd, ok := fs.fields[key]; ok {
			if v, ok := port(el, fd); ok {
				*ports[key] = v
			}
		}
	}
	if fd, ok := fs.fields["hostKey"]; ok {
		hi.hostKeyGiven, hi.hostKeyPos = true, fd.keyPos
		if v, ok := str(el, fd); ok {
			if k, r := normalizeHostKey(v); r != "" {
				el.add(posOf(fd.value), "hostKey %s; give the host's \"ssh-ed25519 AAAA...\" public key line, as printed by \"%s\" (without the host name it starts with) or by \"nixpeer facts\" on that host", r, keyscan(hi))
			} else {
				h.HostKey = k
			}
		}
	}
	if fd, ok := fs.fields["clientKey"]; ok {
		if v, ok := str(el, fd); ok {
			if k, r := normalizeHostKey(v); r != "" {
				el.add(posOf(fd.value), "clientKey %s; give the \"ssh-ed25519 AAAA...\" line of the SSH client key the host fetches with, as \"nixpeer facts\" prints it on that host", r)
			} else {
				h.ClientKey = k
			}
		}
	}
	platformOK := true
	if fd, ok := fs.fields["platform"]; ok {
		v, ok := enum(el, fd, []string{string(PlatformNixOS), string(PlatformNixOSModule), string(PlatformNix)})
		if ok {
			h.Platform = Platform(v)
		}
		platformOK = ok
	}
	if fd, ok := fs.fields["apply"]; ok {
		h.ApplySet = true
		h.Apply = decodeApply(el, fd)
	} else {
		h.Apply = DefaultApply(h.Platform)
	}
	if fd, ok := fs.fields["sshdReload"]; ok {
		h.SSHDReload = decodeApply(el, fd)
	}
	if fd, ok := fs.fields["nixosModuleFile"]; ok {
		if v, ok := str(el, fd); ok {
			switch r := checkAbsPath(v); {
			case r != "":
				el.add(posOf(fd.value), "nixosModuleFile %s %s; use an absolute path of letters, digits and . _ + - /, for example %s", msg.Quote(v), r, DefaultNixOSModuleFile)
			case platformOK && h.Platform != PlatformNixOSModule:
				el.add(fd.keyPos, "nixosModuleFile is only used with \"platform: nixos-module\", but %s has platform %s; set platform: nixos-module or remove nixosModuleFile", who, h.Platform)
			default:
				h.NixOSModuleFile = v
			}
		}
	}
	if fd, ok := fs.fields["serve"]; ok {
		hi.serveGiven = true
		decodeServe(el, fd, hi)
	}
	if fd, ok := fs.fields["substituteFrom"]; ok {
		hi.subs = nameList(el, fd, "host and cache names from this file, for example [stage, fleet]")
	}
	return hi
}

// nameList decodes a list of host or cache names; an entry that is not a
// name is reported, with what to list, and dropped.
func nameList(el *errorList, fd field, what string) []item {
	var out []item
	for _, it := range stringList(el, fd) {
		if r := checkName(it.s); r != "" {
			el.add(it.pos, "%s entry %s %s; list %s", fd.key, msg.Quote(it.s), r, what)
			continue
		}
		out = append(out, it)
	}
	return out
}

// decodeApply decodes apply; an explicit [] is a non-nil empty list.
func decodeApply(el *errorList, fd field) []string {
	out := []string{}
	for i, it := range stringList(el, fd) {
		if r := checkApplyArg(it.s, i == 0); r != "" {
			what := "argument"
			if i == 0 {
				what = "command"
			}
			el.add(it.pos, "%s %s %s %s; it is a command and its arguments, one per list element, for example %s, or [] for none", fd.key, what, msg.Quote(it.s), r, strings.TrimPrefix(help[fd.key].example, fd.key+": "))
			continue
		}
		out = append(out, it.s)
	}
	return out
}

// decodeServe decodes a serve mapping into hi.h.Serve, filling defaults.
// The keyName default (the address) is filled in by checkHosts, once the
// address is known to be valid.
func decodeServe(el *errorList, fd field, hi *hostInfo) {
	if _, isNull := fd.value.(*ast.NullNode); isNull || fd.value == nil {
		el.add(fd.keyPos, "serve has no value; write \"serve: {}\" to serve with the defaults, or give fields such as \"serve: {protocol: ssh-ng}\"")
		return
	}
	fs, ok := mapping(el, fd.value, "serve", help["serve"].example, serveFields)
	if !ok {
		return
	}
	s := &Serve{Protocol: nix.ProtocolSSH, KeyGeneration: 1, SignClosure: DefaultSignClosure, Pos: fs.pos}
	hi.h.Serve = s
	if f, ok := fs.fields["protocol"]; ok {
		if v, ok := enum(el, f, []string{string(nix.ProtocolSSH), string(nix.ProtocolSSHNG)}); ok {
			s.Protocol = nix.Protocol(v)
		}
	}
	if f, ok := fs.fields["keyName"]; ok {
		hi.keyNameGiven = true
		hi.keyNamePos = posOf(f.value)
		if v, ok := str(el, f); ok {
			if r := checkKeyName(v); r != "" {
				el.add(hi.keyNamePos, "keyName %s %s; use letters, digits, '.', '_' and '-', starting with a letter or digit, at most %d characters, for example cache.example.com", msg.Quote(v), r, maxKeyNameLen)
			} else {
				s.KeyName = v
			}
		}
	}
	if f, ok := fs.fields["keyGeneration"]; ok {
		if v, ok := number(el, f, 1, nix.MaxKeyGeneration); ok {
			s.KeyGeneration = v
		}
	}
	if f, ok := fs.fields["publicKey"]; ok {
		hi.publicKeyPos = posOf(f.value)
		if v, ok := str(el, f); ok {
			if k, err := nix.ParsePublicKey(v); err != nil {
				el.add(posOf(f.value), "publicKey %s is not a binary-cache public key (%v); give the NAME:BASE64 line that \"nixpeer facts\" prints on the serving host", msg.Quote(v), err)
			} else {
				s.PublicKey = k.String() // its name is checked with the keyName default
			}
		}
	}
	if f, ok := fs.fields["signClosure"]; ok {
		if v, ok := str(el, f); ok {
			if r := checkAbsPath(v); r != "" {
				el.add(posOf(f.value), "signClosure %s %s; use an absolute path of letters, digits and . _ + - /, for example %s", msg.Quote(v), r, DefaultSignClosure)
			} else {
				s.SignClosure = v
			}
		}
	}
	if f, ok := fs.fields["publishTo"]; ok {
		s.PublishTo = []string{}
		hi.publish = nameList(el, f, "cache names from this file's caches, for example [fleet]")
	}
}

// wrongType reports that fd's value is not of the kind the field takes.
func wrongType(el *errorList, fd field) {
	hp := help[fd.key]
	switch v := fd.value.(type) {
	case nil, *ast.NullNode:
		el.add(fd.keyPos, "%s has no value; it must be %s, for example %s", fd.key, hp.want, hp.example)
		return
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		if hp.text && v.GetToken() != nil {
			el.add(posOf(v), "%s must be %s, not %s; if that is the value you mean, quote it: %s: \"%s\"",
				fd.key, hp.want, describe(v), fd.key, v.GetToken().Value)
			return
		}
	}
	el.add(posOf(fd.value), "%s must be %s, not %s; for example %s", fd.key, hp.want, describe(fd.value), hp.example)
}

// str decodes a single-line string value.
func str(el *errorList, fd field) (string, bool) {
	if s, ok := fd.value.(*ast.StringNode); ok && s != nil {
		return s.Value, true
	}
	wrongType(el, fd)
	return "", false
}

// enum decodes a string value that must be one of allowed.
func enum(el *errorList, fd field, allowed []string) (string, bool) {
	v, ok := str(el, fd)
	if !ok {
		return "", false
	}
	if slices.Contains(allowed, v) {
		return v, true
	}
	el.add(posOf(fd.value), "%s %s is not one of %s%s; for example %s", fd.key, msg.Quote(v), strings.Join(allowed, ", "), didYouMean(v, allowed), help[fd.key].example)
	return "", false
}

var decimalRE = regexp.MustCompile(`^[+-]?[0-9]+$`)

// port decodes a port number 1-65535 written in decimal.
func port(el *errorList, fd field) (int, bool) { return number(el, fd, 1, 65535) }

// number decodes a number lo-hi written in decimal.
func number(el *errorList, fd field, lo, hi int) (int, bool) {
	n, ok := fd.value.(*ast.IntegerNode)
	if !ok || n == nil || n.Token == nil {
		wrongType(el, fd)
		return 0, false
	}
	text := n.Token.Value
	if !decimalRE.MatchString(text) {
		el.add(posOf(n), "%s %s must be written in decimal; for example %s", fd.key, msg.Quote(text), help[fd.key].example)
		return 0, false
	}
	digits := strings.TrimPrefix(text, "+")
	v, err := strconv.Atoi(digits)
	if err != nil || v < lo || v > hi {
		el.add(posOf(n), "%s %s is out of range; use %s, for example %s", fd.key, msg.Quote(text), help[fd.key].want, help[fd.key].example)
		return 0, false
	}
	if len(digits) > 1 && digits[0] == '0' {
		el.add(posOf(n), "%s %s has a leading zero; write %s: %d", fd.key, msg.Quote(text), fd.key, v)
		return 0, false
	}
	return v, true
}

// item is one string of a list, with its position.
type item struct {
	s   string
	pos Pos
}

// stringList decodes a list of single-line strings; entries of another
// kind are reported and skipped.
func stringList(el *errorList, fd field) []item {
	seq, ok := fd.value.(*ast.SequenceNode)
	if !ok || seq == nil {
		wrongType(el, fd)
		return nil
	}
	var out []item
	for _, v := range seq.Values {
		s, ok := v.(*ast.StringNode)
		if !ok || s == nil {
			el.add(posOf(v), "%s entries must be strings, not %s; quote the entry if it looks like a number; for example %s", fd.key, describe(v), help[fd.key].example)
			continue
		}
		out = append(out, item{s: s.Value, pos: posOf(s)})
	}
	return out
}
