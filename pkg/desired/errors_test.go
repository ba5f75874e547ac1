package desired

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Real ed25519 public keys (generated with ssh-keygen for these tests).
const (
	keyA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILHO1/t/ah2UjsBJzzwjYm05Mua0EfLvRe1tRvWRGS9D"
	keyB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGiHlQWXdkpS3nXsFlP+JO1OHauIs9uZTFn/CXQs7FcY"
	keyC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINQw2PBHL6AMqn6XJHwsdLU8bz894/v5BT384RkcECfy"
	// keyRSA is a real ssh-rsa public key.
	keyRSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDDHr/jh2Jy4yALcK4JyWbVkPRaWmhck3IgCoeOO3z1e2dBowLh64QAM+Qb72pxekALga2oi4GvT+TlWNhzPH4V4e8QMRUlVa6K7U+Q7tPCu6+V1iKdkfS6VWbfOCTVV4VDQFILzPT7o95k5x+PhWbxUpDvnWlEPWHcBvx9iRNLVw=="
)

// y joins lines into a YAML document, so that a case's line numbers are
// the positions of its strings.
func y(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

// want is one expected error: its "LINE:COL" and words its message must
// contain (what is wrong and what would be right).
type want struct {
	pos string
	has []string
}

func w(pos string, has ...string) want { return want{pos, has} }

// twoHosts is a valid prefix: stage (serving) and prod, lines 1-7.
var twoHosts = []string{
	"apiVersion: nixpeer/v1",         // 1
	"hosts:",                         // 2
	"  - name: stage",                // 3
	"    address: stage.example.com", // 4
	"    serve: {}",                  // 5
	"  - name: prod",                 // 6
	"    address: prod.example.com",  // 7
}

func with(extra ...string) string {
	return y(append(append([]string{}, twoHosts...), extra...)...)
}

func TestParseErrors(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name string
		in   string
		want []want
	}{
		// YAML syntax.
		{"unterminated quote", y("apiVersion: nixpeer/v1", "hosts:", `  - name: "stage`),
			[]want{w("3:11", "YAML syntax error", "double-quoted", "check the indentation")}},
		{"tab indentation", y("apiVersion: nixpeer/v1", "hosts:", "\t- name: a"),
			[]want{w("3:1", "YAML syntax error", "check the indentation")}},
		{"bad mapping", y("apiVersion: nixpeer/v1", "hosts: a", "  b: c"),
			[]want{w("2:8", "YAML syntax error", "mapping value is not allowed")}},

		// Unknown fields.
		{"unknown top field", y("apiVersion: nixpeer/v1", "host:", "  - name: a", "    address: a.example.com"),
			[]want{
				w("1:1", "no hosts", "hosts:"),
				w("2:1", `unknown field "host"`, `did you mean "hosts"`, "allowed fields: apiVersion, trust, caches, hosts"),
			}},
		{"unknown host field", with("    adress: x"),
			[]want{w("8:5", `unknown field "adress"`, `did you mean "address"`, "allowed fields: name, address, peerPort")}},
		{"unknown serve field", with("    serve: {protocl: ssh}"),
			[]want{w("8:13", `unknown field "protocl"`, `did you mean "protocol"`, "allowed fields: protocol, keyName, ", "signClosure")}},
		{"non-string key", with("    1: x"),
			[]want{w("8:5", `field name "1"`, "allowed fields: name")}},

		// Duplicated fields.
		{"duplicate top field", y("apiVersion: nixpeer/v1", "apiVersion: nixpeer/v1", "hosts: [{name: a, address: a.example.com}]"),
			[]want{w("2:1", `duplicate field "apiVersion"`, "first set at 1:1", "keep only one")}},
		{"duplicate host field", with("    name: prod2"),
			[]want{w("8:5", `duplicate field "name"`, "first set at 6:5")}},
		{"duplicate serve field", y("apiVersion: nixpeer/v1", "hosts:", "  - name: a", "    address: a.example.com", "    serve: {protocol: ssh, protocol: ssh-ng}"),
			[]want{w("5:28", `duplicate field "protocol"`, "first set at 5:13")}},

		// Wrong types.
		{"port as string", with(`    peerPort: "abc"`),
			[]want{w("8:15", "peerPort must be a port number 1-65535", `not the string "abc"`, "peerPort: 7722")}},
		{"port as float", with("    peerPort: 7722.5"),
			[]want{w("8:15", "peerPort must be a port number", `not the number "7722.5"`)}},
		{"hosts as mapping", y("apiVersion: nixpeer/v1", "hosts: {}"),
			[]want{w("2:8", "hosts must be a list of host mappings", "not a mapping", "- name: web1")}},
		{"hosts empty value", y("apiVersion: nixpeer/v1", "hosts:"),
			[]want{w("2:1", "hosts has no value", "a list of host mappings")}},
		{"name as number", y("apiVersion: nixpeer/v1", "hosts:", "  - name: 123", "    address: a.example.com"),
			[]want{w("3:11", "name must be a host name", `not the number "123"`, `quote it: name: "123"`)}},
		{"name as block string", y("apiVersion: nixpeer/v1", "hosts:", "  - name: |", "      a", "    address: a.example.com"),
			[]want{w("3:11", "name must be a host name", "multi-line block string")}},
		{"substituteFrom as string", with("    substituteFrom: stage"),
			[]want{w("8:21", "substituteFrom must be a list of host names", `not the string "stage"`, "substituteFrom: [stage, fleet]")}},
		{"substituteFrom entry as number", with("    substituteFrom: [1]"),
			[]want{w("8:22", "substituteFrom entries must be strings", `not the number "1"`)}},
		{"serve null", with("    serve:"),
			[]want{w("8:5", "serve has no value", `serve: {}`)}},
		{"serve as list", with("    serve: []"),
			[]want{w("8:12", "serve must be a mapping", "not a list", "serve: {}")}},
		{"apply as string", with("    apply: systemctl"),
			[]want{w("8:12", "apply must be a list of strings", "[systemctl, restart, nix-daemon.service]")}},
		{"host entry not a mapping", y("apiVersion: nixpeer/v1", "hosts:", "  - a"),
			[]want{w("3:5", "a host entry must be a mapping", `not the string "a"`, "- name: web1")}},
		{"file not a mapping", y("- a"),
			[]want{w("1:1", "the file must be a mapping", "not a list", "apiVersion: nixpeer/v1")}},
		{"trust as bool", y("apiVersion: nixpeer/v1", "trust: true", "hosts: [{name: a, address: a.example.com}]"),
			[]want{w("2:8", "trust must be approve, tofu or pinned", `not the boolean "true"`)}},

		// Values outside their allowed set or range.
		{"platform typo", with("    platform: nixo"),
			[]want{w("8:15", `platform "nixo" is not one of nixos, nixos-module, nix`, `did you mean "nixos"`)}},
		{"trust typo", y("apiVersion: nixpeer/v1", "trust: pinnd", "hosts: [{name: a, address: a.example.com}]"),
			[]want{w("2:8", `trust "pinnd" is not one of approve, tofu, pinned`, `did you mean "pinned"`)}},
		{"protocol typo", y("apiVersion: nixpeer/v1", "hosts:", "  - name: a", "    address: a.example.com", "    serve: {protocol: ssh-ngg}"),
			[]want{w("5:23", `protocol "ssh-ngg" is not one of ssh, ssh-ng`)}},
		{"peerPort too big", with("    peerPort: 70000"),
			[]want{w("8:15", `peerPort "70000" is out of range`, "1-65535", "peerPort: 7722")}},
		{"sshPort zero", with("    sshPort: 0"),
			[]want{w("8:14", `sshPort "0" is out of range`, "sshPort: 22")}},
		{"sshPort negative", with("    sshPort: -22"),
			[]want{w("8:14", `sshPort "-22" is out of range`)}},
		{"peerPort hex", with("    peerPort: 0x1E2A"),
			[]want{w("8:15", "must be written in decimal", "peerPort: 7722")}},
		{"peerPort leading zero", with("    peerPort: 07722"),
			[]want{w("8:15", "leading zero", "peerPort: 7722")}},

		// apiVersion.
		{"apiVersion missing", y("hosts: [{name: a, address: a.example.com}]"),
			[]want{w("1:1", "no apiVersion", `"apiVersion: nixpeer/v1"`)}},
		{"apiVersion unknown", y("apiVersion: nixpeer/v2", "hosts: [{name: a, address: a.example.com}]"),
			[]want{w("1:13", `apiVersion "nixpeer/v2" is not supported`, "apiVersion: nixpeer/v1")}},
		{"apiVersion number", y("apiVersion: 1", "hosts: [{name: a, address: a.example.com}]"),
			[]want{w("1:13", "apiVersion must be the string nixpeer/v1")}},

		// Hosts.
		{"no hosts field", y("apiVersion: nixpeer/v1", "trust: tofu"),
			[]want{w("1:1", "the file has no hosts", "- name: NAME")}},
		{"empty hosts", y("apiVersion: nixpeer/v1", "hosts: []"),
			[]want{w("2:8", "hosts is empty", "at least one host")}},
		{"missing name and address", y("apiVersion: nixpeer/v1", "hosts:", "  - peerPort: 7722", "    sshPort: 22"),
			[]want{w("3:5", "host entry has no name", "name: NAME"), w("3:5", "has no address", "address: ADDRESS")}},
		{"missing address", y("apiVersion: nixpeer/v1", "hosts:", "  - name: a"),
			[]want{w("3:5", `host "a" has no address`, "address: ADDRESS")}},
		{"duplicate names", with("  - name: stage", "    address: other.example.com"),
			[]want{w("8:11", `duplicate host name "stage"`, "first used at 3:11", "its own name")}},
		{"duplicate addresses", with("  - name: other", "    address: Stage.Example.com"),
			[]want{w("9:14", `duplicate address "Stage.Example.com"`, `host "stage" at 4:14`, "its own address")}},
		{"duplicate IPv6 addresses", y("apiVersion: nixpeer/v1", "hosts:", "  - {name: a, address: 2001:db8::1}", "  - {name: b, address: 2001:DB8:0:0::1}"),
			[]want{w("4:24", `duplicate address "2001:DB8:0:0::1"`)}},

		// substituteFrom.
		{"substituteFrom unknown", with("    substituteFrom: [stge]"),
			[]want{w("8:22", `substituteFrom names "stge", which is not a host`, `did you mean "stage"`, "name one of: stage, prod")}},
		{"substituteFrom self", with("    substituteFrom: [stage, prod]"),
			[]want{w("8:29", `host "prod" cannot substitute from itself`, `remove "prod"`)}},
		{"substituteFrom without serve", y(
			"apiVersion: nixpeer/v1",
			"hosts:",
			"  - name: stage",
			"    address: stage.example.com",
			"  - name: prod",
			"    address: prod.example.com",
			"    substituteFrom: [stage]"),
			[]want{w("7:22", `host "stage", which does not serve`, `add "serve: {}" to host "stage" (at 3:5)`)}},
		{"substituteFrom twice", with("    substituteFrom: [stage, stage]"),
			[]want{w("8:29", `substituteFrom lists "stage" twice`, "first at 8:22", "remove one")}},
		{"substituteFrom bad name", with("    substituteFrom: [Stage]"),
			[]want{w("8:22", `substituteFrom entry "Stage" has upper-case letters`, "[stage, fleet]")}},
		{"cycle", y(
			"apiVersion: nixpeer/v1",
			"hosts:",
			"  - {name: a, address: a.example.com, serve: {}, substituteFrom: [c]}",
			"  - {name: b, address: b.example.com, serve: {}, substituteFrom: [a]}",
			"  - {name: c, address: c.example.com, serve: {}, substituteFrom: [b]}",
			"  - {name: d, address: d.example.com, substituteFrom: [a]}"),
			[]want{w("3:67", "substituteFrom forms a cycle: a -> c -> b -> a", "remove one of these references")}},
		{"two cycles", y(
			"apiVersion: nixpeer/v1",
			"hosts:",
			"  - {name: a, address: a.example.com, serve: {}, substituteFrom: [b]}",
			"  - {name: b, address: b.example.com, serve: {}, substituteFrom: [a]}",
			"  - {name: c, address: c.example.com, serve: {}, substituteFrom: [d]}",
			"  - {name: d, address: d.example.com, serve: {}, substituteFrom: [c]}"),
			[]want{w("3:67", "cycle: a -> b -> a"), w("5:67", "cycle: c -> d -> c")}},

		// Names, addresses, keys and paths that are not well formed.
		{"name upper case", y("apiVersion: nixpeer/v1", "hosts:", "  - name: Web_1", "    address: a.example.com"),
			[]want{w("3:11", `host name "Web_1" has upper-case letters`, "lowercase letters, digits and '-'")}},
		{"name underscore", y("apiVersion: nixpeer/v1", "hosts:", "  - name: web_1", "    address: a.example.com"),
			[]want{w("3:11", `host name "web_1" contains '_'`, `for example "web1"`)}},
		{"name leading dash", y("apiVersion: nixpeer/v1", "hosts:", "  - name: -web", "    address: a.example.com"),
			[]want{w("3:11", "starts or ends with '-'")}},
		{"name too long", y("apiVersion: nixpeer/v1", "hosts:", "  - name: "+long, "    address: a.example.com"),
			[]want{w("3:11", "64 characters long; the limit is 63")}},
		{"name with dollar", y("apiVersion: nixpeer/v1", "hosts:", `  - name: "a${b}"`, "    address: a.example.com"),
			[]want{w("3:11", `contains '$'`)}},
		{"address with space", with(`  - {name: c, address: "c .example.com"}`),
			[]want{w("8:24", `address "c .example.com" contains a space`, "DNS host name", "IPv4", "IPv6 address without brackets")}},
		{"address with brackets", with(`  - {name: c, address: "[2001:db8::1]"}`),
			[]want{w("8:24", "has brackets", "without [ ]")}},
		{"address with port", with(`  - {name: c, address: "c.example.com:22"}`),
			[]want{w("8:24", "includes a port", "sshPort or peerPort")}},
		{"address with zone", with(`  - {name: c, address: "fe80::1%eth0"}`),
			[]want{w("8:24", "IPv6 zone")}},
		{"address IPv4-mapped IPv6", with(`  - {name: c, address: "::ffff:192.0.2.1"}`),
			[]want{w("8:24", `address "::ffff:192.0.2.1" is an IPv4-mapped IPv6 address; write the IPv4 address 192.0.2.1`)}},
		{"address IPv6 with port", with(`  - {name: c, address: "2001:db8::1:22x"}`),
			[]want{w("8:24", "not a valid IPv6 address")}},
		{"address bad IPv4", with(`  - {name: c, address: 192.0.2.300}`),
			[]want{w("8:24", "looks like an IPv4 address but is not one")}},
		{"address empty label", with(`  - {name: c, address: c..example.com}`),
			[]want{w("8:24", "empty label")}},
		{"address trailing dot", with(`  - {name: c, address: c.example.com.}`),
			[]want{w("8:24", "remove the trailing dot")}},
		{"address with user", with(`  - {name: c, address: root@c.example.com}`),
			[]want{w("8:24", "without a user name")}},
		{"address with shell expansion", with(`  - {name: c, address: "${HOST}"}`),
			[]want{w("8:24", `contains '$'`)}},
		{"address label dash", with(`  - {name: c, address: -c.example.com}`),
			[]want{w("8:24", "starts or ends with '-'")}},
		{"address too long", with(`  - {name: c, address: ` + strings.Repeat("a.", 127) + `a}`),
			[]want{w("8:24", "255 characters long; the limit is 253")}},
		{"hostKey rsa", with("    hostKey: " + keyRSA),
			[]want{w("8:14", `hostKey has key type "ssh-rsa"; want ssh-ed25519`, "ssh-keyscan -t ed25519 prod.example.com", "nixpeer facts")}},
		{"hostKey with host name", with("    hostKey: prod.example.com " + keyA),
			[]want{w("8:14", `starts with "prod.example.com"`, "ssh-ed25519")}},
		{"hostKey bad comment", with(`    hostKey: "` + keyA + ` it's me"`),
			[]want{w("8:14", "comment", "remove the comment")}},
		{"hostKey bad base64", with("    hostKey: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILHO1=t"),
			[]want{w("8:14", "hostKey has a key that is not canonical base64")}},
		{"hostKey truncated", with("    hostKey: " + keyA[:len(keyA)-4]),
			[]want{w("8:14", "hostKey does not decode to an ed25519 key")}},
		{"hostKey extra padding", with("    hostKey: " + keyA + "="),
			[]want{w("8:14", "hostKey has a key that is not canonical base64")}},
		{"hostKey two spaces before the comment", with(`    hostKey: "` + keyA + `  root@prod"`),
			[]want{w("8:14", "hostKey has two spaces in a row", `"ssh-ed25519 BASE64 [COMMENT]" separated by single spaces`)}},
		{"clientKey trailing space", with(`    clientKey: "` + keyA + ` "`),
			[]want{w("8:16", "clientKey ends with a space")}},
		{"hostKey sshPort", with("    sshPort: 2222", "    hostKey: ssh-ed25519"),
			[]want{w("9:14", "ssh-keyscan -p 2222 -t ed25519 prod.example.com")}},
		{"keyName bad", with("    serve: {keyName: -cache}"),
			[]want{w("8:22", `keyName "-cache" must start with a letter or digit`, "cache.example.com")}},
		{"keyName colon", with(`    serve: {keyName: "a:b"}`),
			[]want{w("8:22", `keyName "a:b" contains ':'`)}},
		{"keyName default IPv6", y("apiVersion: nixpeer/v1", "hosts:", "  - name: a", "    address: 2001:db8::1", "    serve: {}"),
			[]want{w("5:12", "serve needs a keyName", `"2001:db8::1"`, `"keyName: a"`)}},
		{"keyName duplicate", y("apiVersion: nixpeer/v1", "hosts:",
			"  - {name: a, address: a.example.com, serve: {keyName: cache}}",
			"  - {name: b, address: b.example.com, serve: {keyName: cache}}"),
			[]want{w("4:56", `host "b" uses the binary-cache keyName "cache", as host "a" does`, "set a different keyName")}},
		{"keyName equals other address", y("apiVersion: nixpeer/v1", "hosts:",
			"  - {name: a, address: a.example.com, serve: {}}",
			"  - {name: b, address: b.example.com, serve: {keyName: a.example.com}}"),
			[]want{w("4:56", `keyName "a.example.com", as host "a" does`)}},
		{"keyName a later generation of another", y("apiVersion: nixpeer/v1", "hosts:",
			"  - {name: a, address: a.example.com, serve: {keyName: cache}}",
			"  - {name: b, address: b.example.com, serve: {keyName: cache-g2}}"),
			[]want{w("4:56", `keyName "cache-g2", the name of a later key generation of host "a"'s keyName "cache"`)}},
		{"keyGeneration zero", with("    serve: {keyGeneration: 0}"),
			[]want{w("8:28", `keyGeneration "0" is out of range; use a number 1-9999`)}},
		{"keyGeneration text", with("    serve: {keyGeneration: two}"),
			[]want{w("8:28", "keyGeneration")}},
		{"publicKey of another generation", with("    serve: {keyName: cache, keyGeneration: 2, publicKey: \"cache:" + strings.Repeat("A", 43) + "=\"}"),
			[]want{w("8:58", `publicKey is named "cache", but keyName "cache" with keyGeneration 2 names the key "cache-g2"`, "remove publicKey")}},
		{"signClosure relative", with("    serve: {signClosure: run/current-system}"),
			[]want{w("8:26", `signClosure "run/current-system" is not absolute`, "/run/current-system")}},
		{"signClosure unclean", with("    serve: {signClosure: /run/../x}"),
			[]want{w("8:26", "is not clean", `write "/x"`)}},
		{"signClosure unsafe", with(`    serve: {signClosure: "/run/current system"}`),
			[]want{w("8:26", "contains a space")}},
		{"signClosure root", with("    serve: {signClosure: /}"),
			[]want{w("8:26", "root directory")}},
		{"nixosModuleFile relative", with("    platform: nixos-module", "    nixosModuleFile: nixpeer.nix"),
			[]want{w("9:22", `nixosModuleFile "nixpeer.nix" is not absolute`, "/etc/nixos/nixpeer.nix")}},
		{"nixosModuleFile wrong platform", with("    nixosModuleFile: /etc/nixos/x.nix"),
			[]want{w("8:5", `only used with "platform: nixos-module"`, `host "prod" has platform nixos`)}},
		{"apply command with space", with(`    apply: ["systemctl restart nix-daemon"]`),
			[]want{w("8:13", `apply command "systemctl restart nix-daemon"`, "its own list element")}},
		{"apply relative path", with(`    apply: [./reload]`),
			[]want{w("8:13", `apply command "./reload" must be a command name`)}},
		{"apply argument newline", with(`    apply: [sh, "a\nb"]`),
			[]want{w("8:17", `apply argument "a\nb" contains the control character '\n'`)}},
		{"apply argument empty", with(`    apply: [systemctl, ""]`),
			[]want{w("8:24", `apply argument "" is empty`, "or [] for none")}},

		// trust: pinned.
		{"pinned without keys", y(
			"apiVersion: nixpeer/v1",
			"trust: pinned",
			"hosts:",
			"  - name: stage",
			"    address: stage.example.com",
			"    sshPort: 2222",
			"    serve: {}",
			"  - name: prod",
			"    address: prod.example.com",
			"    substituteFrom: [stage]",
			"  - name: lone",
			"    address: lone.example.com"),
			[]want{
				w("4:5", `host "stage" has no hostKey`, "trust: pinned", "prod substitutes from it", "ssh-keyscan -p 2222 -t ed25519 stage.example.com", "nixpeer facts"),
				w("8:5", `host "prod" has no hostKey`, "trust: pinned", "it substitutes from stage", "ssh-keyscan -t ed25519 prod.example.com", "nixpeer facts"),
			}},
		{"pinned one key missing", y(
			"apiVersion: nixpeer/v1",
			"trust: pinned",
			"hosts:",
			"  - name: stage",
			"    address: stage.example.com",
			"    hostKey: "+keyA,
			"    serve: {}",
			"  - name: prod",
			"    address: prod.example.com",
			"    substituteFrom: [stage]"),
			[]want{w("8:5", `host "prod" has no hostKey`)}},

		// YAML features the file does not use, and input limits.
		{"anchor", with("    serve: &s {}"),
			[]want{w("8:12", "anchors", "write the value out")}},
		{"alias", y("apiVersion: nixpeer/v1", "hosts:", "  - {name: a, address: &a a.example.com}", "  - {name: b, address: *a}"),
			[]want{w("3:24", "anchors"), w("4:24", "aliases")}},
		{"tag", with("    peerPort: !!int 7722"),
			[]want{w("8:15", "tags (!!int)", "plain value")}},
		{"merge key", with("    <<: {peerPort: 1}"),
			[]want{w("8:5", "merge keys (<<)", "write the fields out")}},
		{"explicit key", with("    ? peerPort", "    : 1"),
			[]want{w("8:5", "explicit YAML keys", "key: value")}},
		{"two documents", with("---", "apiVersion: nixpeer/v1"),
			[]want{w("9:1", "second YAML document", "one document")}},
		{"directive", "%YAML 1.2\n---\n" + with(),
			[]want{w("1:1", "directives", "remove the line")}},
		{"empty file", "",
			[]want{w("1:1", "no content", "apiVersion: nixpeer/v1")}},
		{"only comments", "# nothing\n\n# here\n",
			[]want{w("1:1", "no content")}},
		{"too big", with("# " + strings.Repeat("x", MaxSize)),
			[]want{w("1:1", "the limit is 1048576 bytes")}},
		{"invalid UTF-8", with("    # caf\xe9"),
			[]want{w("8:10", "not valid UTF-8", "save it as UTF-8")}},
		{"NUL byte", with("    address2: a\x00b"),
			[]want{w("8:16", "control character U+0000", "remove it")}},
		{"too deep", y("apiVersion: nixpeer/v1", "hosts: "+strings.Repeat("[", 40)),
			[]want{w("2:39", "nest more than 32 levels", "at most 4 levels")}},
		{"too many fields", strings.Repeat("k: v\n", 65),
			[]want{w("65:1", "more than 64 fields in one mapping", "check the indentation")}},
		{"too deep block", y("apiVersion: nixpeer/v1", "hosts: ", strings.Repeat("- ", 40)+"a"),
			[]want{w("3:65", "nest more than 32 levels")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("test.yaml", []byte(tc.in))
			if err == nil {
				t.Fatalf("Parse succeeded (%d hosts); want errors %v", len(f.Hosts), tc.want)
			}
			if f != nil {
				t.Errorf("Parse returned a File with an error")
			}
			t.Logf("%v", err)
			checkErrors(t, err, tc.want)
		})
	}
}

// checkErrors checks that err is an Errors holding exactly the wanted
// errors, in order.
func checkErrors(t *testing.T, err error, wants []want) {
	t.Helper()
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %T %q is not an Errors", err, err)
	}
	if len(es) != len(wants) {
		t.Errorf("got %d errors, want %d:\n%v", len(es), len(wants), err)
	}
	for i, wt := range wants {
		if i >= len(es) {
			break
		}
		e := es[i]
		if got := fmt.Sprintf("%d:%d", e.Line, e.Col); got != wt.pos {
			t.Errorf("error %d at %s, want %s: %s", i, got, wt.pos, e.Msg)
		}
		if e.File != "test.yaml" {
			t.Errorf("error %d names file %q, want test.yaml", i, e.File)
		}
		for _, h := range wt.has {
			if !strings.Contains(e.Msg, h) {
				t.Errorf("error %d %q\n  does not say %q", i, e.Msg, h)
			}
		}
	}
}

func TestParseCollectsAllErrorsSorted(t *testing.T) {
	in := y(
		"apiVersion: nixpeer/v1",               // 1
		"trust: pinned",                        // 2
		"hosts:",                               // 3
		"  - name: stage",                      // 4
		"    address: stage.example.com",       // 5
		"    platform: nixo",                   // 6
		"    serve: {protocol: ftp}",           // 7
		"  - name: prod",                       // 8
		"    address: stage.example.com",       // 9
		"    peerPort: 99999",                  // 10
		"    substituteFrom: [stage, missing]", // 11
		"  - name: prod",                       // 12
		"    address: p.example.com",           // 13
	)
	_, err := Parse("test.yaml", []byte(in))
	checkErrors(t, err, []want{
		w("4:5", `host "stage" has no hostKey`),
		w("6:15", `platform "nixo"`),
		w("7:23", `protocol "ftp"`),
		w("8:5", `host "prod" has no hostKey`),
		w("9:14", `duplicate address "stage.example.com"`),
		w("10:15", `peerPort "99999" is out of range`),
		w("11:29", `substituteFrom names "missing"`),
		w("12:11", `duplicate host name "prod"`),
	})
	want := "test.yaml:4:5: "
	if !strings.HasPrefix(err.Error(), want) || strings.Count(err.Error(), "\n") != 7 {
		t.Errorf("Error() = %q, want 8 lines starting with %q", err.Error(), want)
	}
}

func TestTooManyErrors(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: nixpeer/v1\nhosts:\n")
	for i := 0; i < 150; i++ {
		fmt.Fprintf(&b, "  - {name: Bad%d, address: a%d.example.com}\n", i, i)
	}
	_, err := Parse("test.yaml", []byte(b.String()))
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("got %v, want Errors", err)
	}
	if len(es) != maxErrors+1 || !strings.Contains(es[maxErrors].Msg, "50 more not shown") {
		t.Errorf("got %d errors, last %q; want %d and a summary", len(es), es[len(es)-1].Msg, maxErrors+1)
	}
}

func TestErrorFormat(t *testing.T) {
	e := Error{File: "/etc/nixpeer.yaml", Line: 3, Col: 7, Msg: "bad"}
	if got, want := e.Error(), "/etc/nixpeer.yaml:3:7: bad"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	es := Errors{e, {File: "f", Line: 4, Col: 1, Msg: "worse"}}
	if got, want := es.Error(), "/etc/nixpeer.yaml:3:7: bad\nf:4:1: worse"; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}
