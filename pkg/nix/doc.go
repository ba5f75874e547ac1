// Package nix holds everything nixpeer writes for, or reads from, Nix:
// binary-cache signing keys in the format of
// `nix-store --generate-binary-cache-key`, the managed nix.conf fragment and
// its `!include`, the authorized_keys file of the nix-ssh user, the managed
// NixOS module, and the effective configuration as Nix itself reports it.
//
// Every renderer validates each value against a strict format first (key
// type and length, absolute clean paths, URL shape) and refuses, with an
// error, a value that could break out of its place in the file: a newline, a
// quote or a Nix interpolation `${` is an error, never escaped silently.
// Escaping (NixString) is only the second line of defence.
package nix
