# The nixpeer package. vendorHash is the hash of `go mod vendor`'s output
# (computed with `nix hash path --sri`); scripts/vendorhash.sh prints it
# and the test command checks it is current, so that a new dependency
# cannot leave it stale.
{ lib, buildGoModule, version ? "0.1.0" }:

buildGoModule {
  pname = "nixpeer";
  inherit version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../go.mod ../go.sum ../cmd ../pkg ../internal ];
  };

  vendorHash = "sha256-P70vSvQsF4m/TtapmCBGcrFs/t0eT4v2HhO44dILZqI=";

  subPackages = [ "cmd/agent" ];
  ldflags = [ "-s" "-w" "-X main.version=${version}" ];
  env.CGO_ENABLED = 0;

  # The binary is called nixpeer.
  postInstall = ''
    mv $out/bin/agent $out/bin/nixpeer
  '';

  # The tests need root, a real sshd and network namespaces: they run in
  # the repository's ./scripts/test.sh, not in the Nix sandbox.
  doCheck = false;

  meta = {
    description = "Shares a staging host's Nix store with production over SSH, and keeps it that way";
    homepage = "https://github.com/nixpeer/nixpeer";
    mainProgram = "nixpeer";
    platforms = lib.platforms.linux;
  };
}
