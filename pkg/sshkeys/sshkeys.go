// Package sshkeys keeps the host's ed25519 SSH keys: the agent's client key
// and sshd's own host key. A key is created once, where it is missing, and
// never silently replaced: a key file that exists but is not a valid
// unencrypted ed25519 OpenSSH private key is an error for a person to look
// at. No error of this package holds private key material.
package sshkeys

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/internal/msg"
	"github.com/nixpeer/nixpeer/pkg/atomicfile"
	"github.com/nixpeer/nixpeer/pkg/safefile"
)

const (
	privatePerm = 0o600
	publicPerm  = 0o644
	pemType     = "OPENSSH PRIVATE KEY"
)

// Key is an ed25519 SSH key.
type Key struct {
	// Public is the public half; it is always set.
	Public ssh.PublicKey
	// Signer signs with the private half. It is nil when the key was
	// loaded from a .pub file only.
	Signer ssh.Signer
}

// AuthorizedLine returns the public key as "ssh-ed25519 AAAA...", without
// comment or newline, or "" for a zero Key.
func (k Key) AuthorizedLine() string {
	if k.Public == nil {
		return ""
	}
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(k.Public)), "\n")
}

// Fingerprint returns the key's SHA256 fingerprint as ssh-keygen -l prints
// it ("SHA256:..."), or "" for a zero Key.
func (k Key) Fingerprint() string {
	if k.Public == nil {
		return ""
	}
	return ssh.FingerprintSHA256(k.Public)
}

// Result tells what an Ensure call changed on disk.
type Result struct {
	// Created is set when there was no private key and a new one was
	// written, with its .pub file.
	Created bool
	// ModeFixed is set when an existing private key's mode was changed
	// to 0600.
	ModeFixed bool
	// PubRewritten is set when the .pub file of an existing key was
	// missing or held another key and was written, or when its mode was
	// changed to 0644.
	PubRewritten bool
}

// EnsureClientKey makes sure an unencrypted ed25519 OpenSSH private key
// exists at path, with mode 0600, and its public half at path+".pub"
// ("ssh-ed25519 AAAA... COMMENT\n", mode 0644). A missing key is created,
// and its parent directory with mode 0700 if that is missing too. An
// existing valid key is kept: only a wrong mode is corrected, and its .pub
// rewritten only if missing or holding another key (a .pub with the right
// key and another comment is kept). A file at path that is empty,
// truncated, encrypted, not ed25519 or not a key at all is an error naming
// path and the problem; it is never replaced. comment may be empty and
// otherwise holds only letters, digits and "@._+-".
func EnsureClientKey(path, comment string) (Key, Result, error) {
	return ensure("client key", path, comment, 0o700)
}

// EnsureHostKey does what EnsureClientKey does, for sshd's own ed25519 host
// key (normally /etc/ssh/ssh_host_ed25519_key; the caller passes the path,
// possibly under a test root). A missing key is created as `ssh-keygen -A`
// would: OpenSSH private key format with mode 0600, .pub with mode 0644
// and the comment "root@HOSTNAME", used when comment is empty. A missing
// parent directory is created with mode 0755, as /etc/ssh has.
func EnsureHostKey(path, comment string) (Key, Result, error) {
	if comment == "" {
		host, err := os.Hostname()
		if err != nil {
			return Key{}, Result{}, fmt.Errorf("host key %s: find the host name for its comment: %w", path, err)
		}
		comment = "root@" + host
	}
	return ensure("host key", path, comment, 0o755)
}

// Load reads the key at path without changing anything: the private key
// when path exists (Signer set), otherwise the public key in path+".pub"
// (Signer nil). Both must be ed25519.
func Load(path string) (Key, error) {
	data, _, err := readRegular(path)
	if err == nil {
		k, err := parsePrivate(data)
		if err != nil {
			return Key{}, fmt.Errorf("load key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return Key{}, fmt.Errorf("load key %s: %w", path, err)
	}
	pubPath := path + ".pub"
	data, _, err = readRegular(pubPath)
	if err != nil {
		return Key{}, fmt.Errorf("load key %s: no private key, and its public key: %w", path, err)
	}
	pub, err := parsePubFile(data)
	if err != nil {
		return Key{}, fmt.Errorf("load public key %s: %w", pubPath, err)
	}
	return Key{Public: pub}, nil
}

// Inspection says what an Ensure call would have to do to a key.
type Inspection struct {
	// Missing: there is no private key file.
	Missing bool
	// ModeWrong: the private key's mode is not 0600.
	ModeWrong bool
	// PubWrong: the .pub file is missing, holds another key, or its mode
	// is not 0644.
	PubWrong bool
}

// NeedsWork reports whether Ensure would change anything.
func (i Inspection) NeedsWork() bool { return i.Missing || i.ModeWrong || i.PubWrong }

// Inspect reads the key at path and its .pub file without changing
// anything. A missing key is no error (Inspection.Missing); a file that is
// not a usable key is, as Ensure would report it.
func Inspect(what, path string) (Key, Inspection, error) {
	data, st, err := readRegular(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Key{}, Inspection{Missing: true, PubWrong: true}, nil
	}
	if err != nil {
		return Key{}, Inspection{}, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	k, err := parsePrivate(data)
	if err != nil {
		return Key{}, Inspection{}, fmt.Errorf("%s %s: %w; move it away to let the agent create a new one", what, path, err)
	}
	in := Inspection{ModeWrong: st.Mode().Perm() != privatePerm}
	pubData, pubSt, err := readRegular(path + ".pub")
	if err != nil {
		in.PubWrong = true
	} else if pub, perr := parsePubFile(pubData); perr != nil || !bytes.Equal(pub.Marshal(), k.Public.Marshal()) || pubSt.Mode().Perm() != publicPerm {
		in.PubWrong = true
	}
	return k, in, nil
}

// maxLineLen bounds a public key line: "ssh-ed25519 BASE64" is 80
// characters, the rest is room for a comment.
const maxLineLen = 1024

// A LineError says why ParsePublicLine, ParseAuthorizedLine or
// AuthorizedLineOf refused a key. Its Reason is worded to follow the name
// of the value, so that a caller can name the value its own way:
// "hostKey " + Reason reads as a sentence. It holds no key material but,
// at most, a short key type.
type LineError struct {
	Reason string
}

func (e *LineError) Error() string { return "public key " + e.Reason }

func lineError(format string, args ...any) error {
	return &LineError{Reason: fmt.Sprintf(format, args...)}
}

// ParsePublicLine parses one public key line strictly: exactly
// "ssh-ed25519 BASE64" or "ssh-ed25519 BASE64 COMMENT", at most 1024
// characters, fields separated by one space, no other whitespace,
// canonical padded base64 holding exactly one ed25519 key, and a comment of
// letters, digits and "@._+-" only. The comment is dropped. It is the one
// parser of key lines in nixpeer: the desired-state file's hostKey and
// clientKey, the keys of a peer's facts, and every key nixpeer writes into
// known_hosts, authorized_keys, a substituter URL or the NixOS module go
// through it (a .pub file, which may hold any comment, is read with
// parsePubFile). A refusal is a *LineError.
func ParsePublicLine(s string) (ssh.PublicKey, error) {
	const form = "want \"ssh-ed25519 BASE64 [COMMENT]\" separated by single spaces"
	switch {
	case s == "":
		return nil, lineError("is empty")
	case len(s) > maxLineLen:
		return nil, lineError("is %d characters long; an ed25519 key line is 80, and %d at most with a comment", len(s), maxLineLen)
	case strings.ContainsAny(s, "\r\n"):
		return nil, lineError("holds a line break; want one line")
	}
	typ, rest, ok := strings.Cut(s, " ")
	b64, comment, hasComment := strings.Cut(rest, " ")
	switch {
	case !ok:
		return nil, lineError("has one field only; %s", form)
	case typ == "":
		return nil, lineError("starts with a space; %s", form)
	case b64 == "":
		return nil, lineError("has two spaces in a row; %s", form)
	case typ != ssh.KeyAlgoED25519:
		return nil, lineError("has key type %s; want ssh-ed25519", msg.Quote(typ))
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || base64.StdEncoding.EncodeToString(raw) != b64 {
		return nil, lineError("has a key that is not canonical base64")
	}
	pub, err := ssh.ParsePublicKey(raw)
	switch {
	case err != nil:
		return nil, lineError("does not decode to an ed25519 key (%v)", err)
	case pub.Type() != ssh.KeyAlgoED25519:
		return nil, lineError("holds a %s key although it says ssh-ed25519", msg.Quote(pub.Type()))
	case !bytes.Equal(pub.Marshal(), raw):
		return nil, lineError("is not in canonical form")
	case !hasComment:
		return pub, nil
	case comment == "":
		return nil, lineError("ends with a space; %s", form)
	case comment[0] == ' ':
		return nil, lineError("has two spaces in a row; %s", form)
	case !validComment(comment):
		return nil, lineError("has a comment with characters other than letters, digits and @._+-; remove the comment")
	}
	return pub, nil
}

// ParseAuthorizedLine parses a key line as ParsePublicLine does, without a
// comment: exactly "ssh-ed25519 BASE64", the form AuthorizedLine returns.
// A refusal is a *LineError.
func ParseAuthorizedLine(s string) (ssh.PublicKey, error) {
	pub, err := ParsePublicLine(s)
	if err == nil && strings.Count(s, " ") != 1 {
		return nil, lineError("has a comment; want \"ssh-ed25519 BASE64\" only")
	}
	return pub, err
}

// AuthorizedLineOf returns "ssh-ed25519 BASE64" for a plain ed25519 public
// key, checked by ParseAuthorizedLine; any other key, a certificate
// included, is refused with a *LineError.
func AuthorizedLineOf(k ssh.PublicKey) (string, error) {
	if k == nil {
		return "", lineError("is missing")
	}
	if _, ok := k.(*ssh.Certificate); ok {
		return "", lineError("is a certificate; want a plain ssh-ed25519 key")
	}
	line := k.Type() + " " + base64.StdEncoding.EncodeToString(k.Marshal())
	if _, err := ParseAuthorizedLine(line); err != nil {
		return "", err
	}
	return line, nil
}

func validComment(c string) bool {
	return c != "" && msg.FirstBad(c, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@._+-") == ""
}

func ensure(what, path, comment string, dirPerm fs.FileMode) (Key, Result, error) {
	if comment != "" && !validComment(comment) {
		return Key{}, Result{}, fmt.Errorf("%s %s: comment %q: only letters, digits and @._+- are allowed", what, path, comment)
	}
	k, in, err := Inspect(what, path)
	if err == nil && in.Missing {
		created, cerr := create(what, path, comment, dirPerm)
		if !errors.Is(cerr, fs.ErrExist) {
			return created, Result{Created: cerr == nil}, cerr
		}
		// Someone else created the key meanwhile: check theirs.
		if k, in, err = Inspect(what, path); err == nil && in.Missing {
			err = fmt.Errorf("read %s %s: %w", what, path, fs.ErrNotExist)
		}
	}
	if err != nil {
		return Key{}, Result{}, err
	}
	var res Result
	if in.ModeWrong {
		if err := os.Chmod(path, privatePerm); err != nil {
			return Key{}, Result{}, fmt.Errorf("fix mode of %s %s: %w", what, path, err)
		}
		res.ModeFixed = true
	}
	res.PubRewritten, err = ensurePub(what, path+".pub", k, comment)
	if err != nil {
		return Key{}, Result{}, err
	}
	return k, res, nil
}

// create writes a new key at path, and then its .pub file. The key is
// written with atomicfile.CreateExclusive, not WriteFile, whose rename
// would replace a key that sshd or another process created meanwhile:
// that is an error matching fs.ErrExist instead.
func create(what, path, comment string, dirPerm fs.FileMode) (Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, fmt.Errorf("generate %s %s: %w", what, path, err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return Key{}, fmt.Errorf("encode %s %s: %w", what, path, err)
	}
	k, err := keyOf(priv)
	if err != nil {
		return Key{}, fmt.Errorf("encode %s %s: %w", what, path, err)
	}
	if err := atomicfile.MkdirAll(filepath.Dir(path), dirPerm); err != nil {
		return Key{}, fmt.Errorf("create directory for %s %s: %w", what, path, err)
	}
	if err := atomicfile.CreateExclusive(path, encodePEM(block), privatePerm); err != nil {
		return Key{}, fmt.Errorf("write %s %s: %w", what, path, err)
	}
	if err := atomicfile.WriteFile(path+".pub", []byte(pubLine(k, comment)), publicPerm); err != nil {
		return Key{}, fmt.Errorf("write public %s %s.pub: %w", what, path, err)
	}
	return k, nil
}

// encodePEM encodes a private key block as ssh-keygen does: base64 lines
// of 70 characters where encoding/pem uses 64.
func encodePEM(block *pem.Block) []byte {
	const width = 70
	b64 := base64.StdEncoding.EncodeToString(block.Bytes)
	var out bytes.Buffer
	out.WriteString("-----BEGIN " + block.Type + "-----\n")
	for len(b64) > 0 {
		n := min(width, len(b64))
		out.WriteString(b64[:n] + "\n")
		b64 = b64[n:]
	}
	out.WriteString("-----END " + block.Type + "-----\n")
	return out.Bytes()
}

// ensurePub makes path (the .pub file) hold k with mode 0644, keeping a
// file that already holds k whatever its comment. It reports whether it
// changed anything.
func ensurePub(what, path string, k Key, comment string) (bool, error) {
	data, st, err := readRegular(path)
	switch {
	case err == nil:
		if pub, perr := parsePubFile(data); perr == nil && bytes.Equal(pub.Marshal(), k.Public.Marshal()) {
			if st.Mode().Perm() == publicPerm {
				return false, nil
			}
			if err := os.Chmod(path, publicPerm); err != nil {
				return false, fmt.Errorf("fix mode of public %s %s: %w", what, path, err)
			}
			return true, nil
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		return false, fmt.Errorf("read public %s %s: %w", what, path, err)
	}
	if err := atomicfile.WriteFile(path, []byte(pubLine(k, comment)), publicPerm); err != nil {
		return false, fmt.Errorf("write public %s %s: %w", what, path, err)
	}
	return true, nil
}

func pubLine(k Key, comment string) string {
	if comment == "" {
		return k.AuthorizedLine() + "\n"
	}
	return k.AuthorizedLine() + " " + comment + "\n"
}

// readRegular reads a regular file (following symlinks); anything else is
// refused without opening it, so that a FIFO cannot block the agent.
func readRegular(path string) ([]byte, fs.FileInfo, error) {
	data, st, err := safefile.Read(path, maxKeyFile, safefile.Options{})
	if err != nil {
		return nil, nil, err
	}
	if len(data) > maxKeyFile {
		return nil, nil, fmt.Errorf("it is larger than %d bytes, far more than a key", maxKeyFile)
	}
	return data, st, nil
}

// maxKeyFile bounds what is read of a key file.
const maxKeyFile = 64 << 10

// parsePrivate parses an unencrypted ed25519 OpenSSH private key. Its
// errors say what is wrong without quoting the file.
func parsePrivate(data []byte) (Key, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return Key{}, errors.New("the file is empty")
	}
	block, rest := pem.Decode(data)
	switch {
	case block == nil && bytes.Contains(data, []byte("-----BEGIN "+pemType+"-----")):
		return Key{}, errors.New("the key is truncated or corrupt: its PEM block does not decode (half-written?)")
	case block == nil:
		return Key{}, errors.New("the file is not a PEM-encoded private key")
	case !bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("-----BEGIN "+block.Type+"-----")):
		return Key{}, errors.New("the file has data before the key's BEGIN line")
	case len(bytes.TrimSpace(rest)) != 0:
		return Key{}, errors.New("the file has data after the key's END line")
	case block.Type != pemType:
		return Key{}, fmt.Errorf("the file holds a PEM %s block; want an ed25519 key in OpenSSH format (%s)", msg.Quote(block.Type), pemType)
	}
	raw, err := ssh.ParseRawPrivateKey(data)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		return Key{}, errors.New("the key is encrypted with a passphrase; the agent needs an unencrypted key")
	case err != nil:
		return Key{}, fmt.Errorf("the key does not parse: %w", err)
	}
	var priv ed25519.PrivateKey
	switch r := raw.(type) {
	case *ed25519.PrivateKey:
		priv = *r
	case ed25519.PrivateKey:
		priv = r
	case *rsa.PrivateKey:
		return Key{}, errors.New("the key is RSA; want ed25519")
	case *ecdsa.PrivateKey:
		return Key{}, errors.New("the key is ECDSA; want ed25519")
	default:
		return Key{}, fmt.Errorf("the key is of type %T; want ed25519", raw)
	}
	if len(priv) != ed25519.PrivateKeySize || !bytes.Equal(ed25519.NewKeyFromSeed(priv.Seed()), priv) {
		return Key{}, errors.New("the key is corrupt: its public half does not match its private half")
	}
	return keyOf(priv)
}

func keyOf(priv ed25519.PrivateKey) (Key, error) {
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return Key{}, err
	}
	return Key{Public: signer.PublicKey(), Signer: signer}, nil
}

// parsePubFile reads a .pub file: one ed25519 key in authorized_keys form,
// with any comment, and nothing else.
func parsePubFile(data []byte) (ssh.PublicKey, error) {
	pub, _, opts, rest, err := ssh.ParseAuthorizedKey(data)
	switch {
	case err != nil:
		return nil, fmt.Errorf("parse: %w", err)
	case len(opts) != 0:
		return nil, errors.New("parse: the key line has options")
	case len(bytes.TrimSpace(rest)) != 0:
		return nil, errors.New("parse: more than one line")
	case pub.Type() != ssh.KeyAlgoED25519:
		return nil, fmt.Errorf("the key is %s; want ssh-ed25519", msg.Quote(pub.Type()))
	}
	return pub, nil
}
