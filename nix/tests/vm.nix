# Two NixOS VMs, staging and production, each with nixpeer's module and the
# same desired state: staging serves its store over the real nix.sshServe,
# production fetches a path built on staging. Needs nixpkgs and KVM:
#   nix build .#checks.x86_64-linux.vm
# It cannot run on the machine the repository's tests run on (no KVM).
{ pkgs, module }:

let
  settings = {
    hosts = [
      { name = "staging"; address = "staging"; serve = { }; }
      { name = "production"; address = "production"; substituteFrom = [ "staging" ]; }
    ];
  };
  node = host: { ... }: {
    imports = [ module ];
    services.openssh.enable = true;
    services.nixpeer = { enable = true; inherit host settings; };
    virtualisation.writableStore = true;
  };
in
pkgs.testers.runNixOSTest {
  name = "nixpeer";
  nodes.staging = node "staging";
  nodes.production = node "production";
  testScript = ''
    start_all()
    import json
    staging.wait_for_unit("nixpeer.service")
    production.wait_for_unit("nixpeer.service")

    # trust: approve (the default): each host approves the other's host
    # key, compared with what `nixpeer facts` prints on that host.
    def host_key(node):
        return json.loads(node.succeed("nixpeer facts --json"))["hostKey"]["fingerprint"]
    production.wait_until_succeeds(f"nixpeer trust approve staging {host_key(staging)}", timeout=120)
    staging.wait_until_succeeds(f"nixpeer trust approve production {host_key(production)}", timeout=120)

    staging.wait_until_succeeds("nixpeer status", timeout=120)
    production.wait_until_succeeds("nixpeer status", timeout=120)

    # A path that exists only on staging, built and signed there.
    path = staging.succeed(
        "nix-build --no-out-link -E 'derivation { name = \"hello-from-staging\"; system = builtins.currentSystem; "
        + "builder = \"/bin/sh\"; args = [ \"-c\" \"echo hello > $out\" ]; }'"
    ).strip()
    staging.succeed(f"nix store sign --extra-experimental-features nix-command -k /var/lib/nixpeer/keys/cache-priv-key.pem {path}")

    # Production fetches it from staging, with only what the agents wrote.
    production.succeed(f"nix-store --realise {path}")
    production.succeed(f"test \"$(cat {path})\" = hello")
  '';
}
