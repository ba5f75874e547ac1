// Package bincache is nixpeer's binary-cache tier on S3-compatible object
// stores: each host's credentials (credentials.go), the bucket as a Nix
// binary cache (bucket.go), the loopback HTTP server through which a
// host's Nix reads a cache (reader.go), and the queue of what a serving
// host uploads (publisher.go).
//
// The bucket holds the layout of an HTTP binary cache: nix-cache-info,
// HASH.narinfo for each store path and nar/FILEHASH.nar.zst for each NAR.
// A NAR is uploaded before its narinfo, so that no reader finds a
// narinfo whose NAR is missing. Requests are signed by minio-go, a
// general S3 client, so that any S3-compatible store works.
package bincache
