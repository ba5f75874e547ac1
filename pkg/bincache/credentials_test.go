package bincache

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodCredentials = `# written by hand
[other]
aws_access_key_id = OTHER
aws_secret_access_key = other

[default]
aws_access_key_id = AKIAEXAMPLE
aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
`

func TestParseCredentials(t *testing.T) {
	c, err := ParseCredentials([]byte(goodCredentials))
	if err != nil {
		t.Fatal(err)
	}
	if c.AccessKeyID != "AKIAEXAMPLE" || c.SecretAccessKey != "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" || c.SessionToken != "" {
		t.Fatalf("parsed %#v: %q %q", c, c.AccessKeyID, c.SecretAccessKey)
	}
	if strings.Contains(c.String(), c.SecretAccessKey) {
		t.Fatal("String shows the secret")
	}
	for name, in := range map[string]string{
		"no default":   "[other]\naws_access_key_id = a\naws_secret_access_key = b\n",
		"no secret":    "[default]\naws_access_key_id = a\n",
		"no key id":    "[default]\naws_secret_access_key = b\n",
		"space inside": "[default]\naws_access_key_id = a b\naws_secret_access_key = b\n",
		"not ini":      "[default\n",
	} {
		if _, err := ParseCredentials([]byte(in)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestReadCredentials(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fleet.credentials")
	if _, err := ReadCredentials(path, os.Getuid()); !errors.Is(err, fs.ErrNotExist) || CredentialsProblem(err) != "missing" {
		t.Fatalf("a missing file: %v", err)
	}
	if err := os.WriteFile(path, []byte(goodCredentials), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ReadCredentials(path, os.Getuid())
	if !errors.Is(err, ErrLoose) || CredentialsProblem(err) != "loose" || !strings.Contains(err.Error(), "chmod 600 "+path) {
		t.Fatalf("a file readable by others: %v", err)
	}
	if _, err := ReadCredentials(path, os.Getuid()+1); !errors.Is(err, ErrLoose) {
		t.Fatalf("a file owned by another user: %v", err)
	}
	os.Chmod(path, 0o600)
	if c, err := ReadCredentials(path, os.Getuid()); err != nil || c.AccessKeyID != "AKIAEXAMPLE" {
		t.Fatalf("a good file: %v", err)
	}
	os.WriteFile(path, []byte("[default]\n"), 0o600)
	if _, err := ReadCredentials(path, os.Getuid()); CredentialsProblem(err) != "invalid" || !strings.Contains(err.Error(), path) {
		t.Fatalf("an invalid file: %v", err)
	}
}

func FuzzParseCredentials(f *testing.F) {
	f.Add([]byte(goodCredentials))
	f.Add([]byte("[default]\naws_access_key_id=a\naws_secret_access_key=b\naws_session_token=c\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCredentials(data)
		if err != nil {
			return
		}
		for _, v := range []string{c.AccessKeyID, c.SecretAccessKey, c.SessionToken} {
			if strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
				t.Fatalf("value %q holds white space or a control character", v)
			}
		}
		if c.AccessKeyID == "" || c.SecretAccessKey == "" {
			t.Fatal("parsed without a key")
		}
	})
}
