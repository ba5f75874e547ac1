package bincache

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"gopkg.in/ini.v1"

	"github.com/nixpeer/nixpeer/pkg/safefile"
)

// Credentials are a host's keys of an object store.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	// SessionToken is set for temporary credentials only.
	SessionToken string
}

// String never shows the secret.
func (c Credentials) String() string { return "credentials " + c.AccessKeyID + " (secret redacted)" }

// GoString never shows the secret.
func (c Credentials) GoString() string { return c.String() }

// maxCredentialsSize bounds a credentials file.
const maxCredentialsSize = 64 << 10

// ErrLoose is matched by the error for a credentials file that users
// other than its owner may read or write, or that root does not own.
var ErrLoose = errors.New("readable or writable by others")

// ReadCredentials reads the credentials file at path: a regular file,
// owned by uid, that no one else may read or write (mode 0600 or
// stricter), in the AWS shared-credentials format (see
// ParseCredentials).
func ReadCredentials(path string, uid int) (Credentials, error) {
	data, st, err := safefile.Read(path, maxCredentialsSize, safefile.Options{})
	if err != nil {
		return Credentials{}, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return Credentials{}, fmt.Errorf("%s has mode %04o: %w; run chmod 600 %s", path, st.Mode().Perm(), ErrLoose, path)
	}
	if owner, ok := ownerOf(st); ok && owner != uid {
		return Credentials{}, fmt.Errorf("%s is owned by uid %d, not %d: %w; run chown %d %s", path, owner, uid, ErrLoose, uid, path)
	}
	if len(data) > maxCredentialsSize {
		return Credentials{}, fmt.Errorf("%s is over %d bytes", path, maxCredentialsSize)
	}
	c, err := ParseCredentials(data)
	if err != nil {
		return Credentials{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseCredentials reads the [default] profile of a file in the AWS
// shared-credentials format:
//
//	[default]
//	aws_access_key_id = AKIA...
//	aws_secret_access_key = ...
//	aws_session_token = ...   (optional)
//
// Other profiles are ignored; the two keys are required, and no value may
// hold white space or control characters.
func ParseCredentials(data []byte) (Credentials, error) {
	f, err := ini.LoadSources(ini.LoadOptions{Insensitive: false, IgnoreInlineComment: true, AllowBooleanKeys: false}, data)
	if err != nil {
		// Not the parser's words: they quote the line, which may be a
		// secret.
		return Credentials{}, errors.New("not in the AWS shared-credentials format: write [default], then the lines aws_access_key_id = KEY and aws_secret_access_key = SECRET")
	}
	sec, err := f.GetSection("default")
	if err != nil {
		return Credentials{}, errors.New("no [default] profile; write [default], then the lines aws_access_key_id = KEY and aws_secret_access_key = SECRET")
	}
	var c Credentials
	for key, dst := range map[string]*string{"aws_access_key_id": &c.AccessKeyID, "aws_secret_access_key": &c.SecretAccessKey, "aws_session_token": &c.SessionToken} {
		v := sec.Key(key).String()
		if strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return Credentials{}, fmt.Errorf("%s holds white space or a control character", key)
		}
		if len(v) > 4096 {
			return Credentials{}, fmt.Errorf("%s is over 4096 characters", key)
		}
		*dst = v
	}
	switch {
	case c.AccessKeyID == "":
		return Credentials{}, errors.New("the [default] profile has no aws_access_key_id")
	case c.SecretAccessKey == "":
		return Credentials{}, errors.New("the [default] profile has no aws_secret_access_key")
	}
	return c, nil
}

// CredentialsProblem says what is wrong with a credentials file for
// status: "missing", "loose" or "invalid".
func CredentialsProblem(err error) (kind string) {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "missing"
	case errors.Is(err, ErrLoose):
		return "loose"
	}
	return "invalid"
}
