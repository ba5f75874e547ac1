package sshkeys

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
)

// CertifiedKey returns offered as the SSH host certificate it must be:
// signed by one of cas, valid now, naming address among its principals, as
// OpenSSH checks it for the address it connects to (a DNS name in lower
// case). Its Key is the peer's host key. Anything else is an error saying
// why.
func CertifiedKey(offered ssh.PublicKey, cas []ssh.PublicKey, address string) (*ssh.Certificate, error) {
	cert, ok := offered.(*ssh.Certificate)
	if !ok {
		return nil, fmt.Errorf("trust: ca, and the peer offers the plain host key %s, not a host certificate: sign it with your CA (ssh-keygen -s CA_KEY -h -I NAME -n %s KEY.pub) and put the -cert.pub beside it",
			ssh.FingerprintSHA256(offered), address)
	}
	if cert.CertType != ssh.HostCert {
		return nil, fmt.Errorf("trust: ca, and the peer's certificate %q is a user certificate, not a host certificate", cert.KeyId)
	}
	if !slices.ContainsFunc(cas, func(ca ssh.PublicKey) bool { return bytes.Equal(ca.Marshal(), cert.SignatureKey.Marshal()) }) {
		return nil, fmt.Errorf("trust: ca, and the peer's host certificate %q is signed by %s, which is not one of hostCAs", cert.KeyId, ssh.FingerprintSHA256(cert.SignatureKey))
	}
	var checker ssh.CertChecker
	if err := checker.CheckCert(strings.ToLower(address), cert); err != nil {
		return nil, fmt.Errorf("trust: ca, and the peer's host certificate %q does not hold for %s: %w", cert.KeyId, address, err)
	}
	return cert, nil
}

// ReadHostCert reads the host certificate at path (ssh-keygen's
// KEY-cert.pub) for the host key key. A missing file is (nil, nil).
func ReadHostCert(path string, key ssh.PublicKey) (*ssh.Certificate, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the host certificate: %w", err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, fmt.Errorf("host certificate %s: %w", path, err)
	}
	cert, ok := pub.(*ssh.Certificate)
	switch {
	case !ok:
		return nil, fmt.Errorf("%s holds a plain key, not a certificate", path)
	case cert.CertType != ssh.HostCert:
		return nil, fmt.Errorf("%s is a user certificate, not a host certificate", path)
	case key == nil || !bytes.Equal(cert.Key.Marshal(), key.Marshal()):
		return nil, fmt.Errorf("%s certifies another key than the host key beside it (%s): sign the host key again", path, ssh.FingerprintSHA256(cert.Key))
	}
	return cert, nil
}
