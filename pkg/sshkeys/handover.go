package sshkeys

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nixpeer/nixpeer/pkg/atomicfile"
	"golang.org/x/crypto/ssh"
)

// maxProofLen bounds a handover proof: an ed25519 signature in SSH wire
// format is 83 bytes, 112 in base64.
const maxProofLen = 512

// handoverBlob is what a host's current key signs to hand its name over
// to its next key: a purpose, the host's name and address in the
// desired state, and the next key, so that a proof is good for nothing
// else (ssh's hostkeys-prove-00@openssh.com binds a session instead).
func handoverBlob(name, address string, next ssh.PublicKey) []byte {
	return append([]byte("nixpeer-host-key-handover-v1\x00"+name+"\x00"+address+"\x00"), next.Marshal()...)
}

// HandoverProof is current's signature handing host name at address over
// to the key next, in base64.
func HandoverProof(current ssh.Signer, name, address string, next ssh.PublicKey) (string, error) {
	sig, err := current.Sign(nil, handoverBlob(name, address, next)) // ed25519: deterministic
	if err != nil {
		return "", fmt.Errorf("sign the host key handover: %w", err)
	}
	return base64.StdEncoding.EncodeToString(ssh.Marshal(sig)), nil
}

// VerifyHandover checks that proof is trusted's hand-over of host name
// at address to next.
func VerifyHandover(trusted ssh.PublicKey, name, address string, next ssh.PublicKey, proof string) error {
	if len(proof) > maxProofLen {
		return errors.New("the host key handover proof is too long")
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(proof)
	if err != nil {
		return errors.New("the host key handover proof is not base64")
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(raw, &sig); err != nil {
		return errors.New("the host key handover proof is not an SSH signature")
	}
	if err := trusted.Verify(handoverBlob(name, address, next), &sig); err != nil {
		return errors.New("the host key handover proof is not signed by the trusted host key")
	}
	return nil
}

// NextSuffix is what the next host key's file adds to the host key's path
// while a rotation hands the host over to it; RetiredSuffix what the old
// key's adds once it did.
const (
	NextSuffix    = ".next"
	RetiredSuffix = ".retired"
)

// PromoteNext makes the next host key (path+NextSuffix) the host key at
// path, and keeps the old one as path+RetiredSuffix, 0600. The secrets move
// by renames, so a crash between two leaves the old key or the next one at
// its place, and PromoteNext run again finishes (a missing host key is no
// error); the public files are made again from the keys (EnsureHostKey).
func PromoteNext(path string) error {
	next := path + NextSuffix
	data, _, err := readRegular(next)
	if err == nil {
		_, err = parsePrivate(data)
	}
	if err != nil {
		return fmt.Errorf("promote the next host key %s: %w", next, err)
	}
	if err := os.Rename(path, path+RetiredSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("retire the host key: %w", err)
	}
	for _, pub := range []string{path + ".pub", next + ".pub"} {
		if err := os.Remove(pub); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.Rename(next, path); err != nil {
		return fmt.Errorf("promote the next host key: %w", err)
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}
