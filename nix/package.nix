# The nixpeer package. vendorHash is the hash of `go mod vendor`'s output
# (computed with `nix hash path --sri`); scripts/vendorhash.sh prints it
# and the test command checks it is current, so that a new dependency
# cannot leave it stale.
{ lib, stdenv, buildGoModule, installShellFiles, version ? "0.1.0" }:

buildGoModule {
  pname = "nixpeer";
  inherit version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../go.mod ../go.sum ../cmd ../pkg ../internal ../docs/man ];
  };

  vendorHash = "sha256-SKJunYpTLEQWRL+t9YwCEdKdAZnuO+wTBK7TGbXjVlU=";

  subPackages = [ "cmd/agent" ];
  ldflags = [ "-s" "-w" "-X main.version=${version}" ];
  env.CGO_ENABLED = 0;

  nativeBuildInputs = [ installShellFiles ];

  # The binary is called nixpeer; its manual pages are checked in
  # (rendered from docs/man/*.md), its completions it prints itself (not
  # when it is built for a machine this one cannot run).
  postInstall = ''
    mv $out/bin/agent $out/bin/nixpeer
    installManPage docs/man/nixpeer.1 docs/man/nixpeer-desired.yaml.5
  '' + lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd nixpeer \
      --bash <($out/bin/nixpeer completion bash) \
      --zsh <($out/bin/nixpeer completion zsh) \
      --fish <($out/bin/nixpeer completion fish)
  '';

  # The tests need root, a real sshd and network namespaces: they run in
  # the repository's ./scripts/test.sh, not in the Nix sandbox.
  doCheck = false;

  meta = {
    description = "Shares a staging host's Nix store with production over SSH, and keeps it that way";
    homepage = "https://github.com/nixpeer/nixpeer";
    license = lib.licenses.asl20;
    mainProgram = "nixpeer";
    platforms = lib.platforms.linux;
  };
}
