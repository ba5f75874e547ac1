{
  description = "nixpeer: a staging host shares its Nix store with production over SSH, kept true by an agent on every host";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = "0.1.0+${self.shortRev or "dirty"}";
    in
    {
      packages = forAllSystems (pkgs: rec {
        nixpeer = pkgs.callPackage ./nix/package.nix { inherit version; };
        default = nixpeer;
      });

      overlays.default = final: prev: {
        nixpeer = final.callPackage ./nix/package.nix { inherit version; };
      };

      nixosModules.nixpeer = { lib, pkgs, ... }: {
        imports = [ ./nix/module.nix ];
        services.nixpeer.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
      nixosModules.default = self.nixosModules.nixpeer;

      # Two NixOS VMs, staging and production: needs KVM.
      checks.x86_64-linux.vm = import ./nix/tests/vm.nix {
        pkgs = nixpkgs.legacyPackages.x86_64-linux;
        module = self.nixosModules.nixpeer;
      };
    };
}
