// Package debpkg holds the test of nixpeer's Debian package
// (scripts/deb.sh, packaging/deb): built, installed, verified, removed
// and purged on this machine. It has no code of its own.
package debpkg
