// Package nixfiles holds the tests of the repository's Nix expressions
// (flake.nix, default.nix, nix/): that they parse, that the NixOS module
// evaluates against a stand-in for nixpkgs and writes a desired-state
// file the agent accepts, that its service settings are those of
// systemd/nixpeer.service, and that nix/package.nix's vendorHash is
// current. It has no code of its own.
package nixfiles
