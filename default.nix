# For users without flakes:
#   nix-build                                  the nixpeer package
#   imports = [ (import /path/to/nixpeer { }).module ];   the NixOS module
{ pkgs ? import <nixpkgs> { } }:

let
  nixpeer = pkgs.callPackage ./nix/package.nix { };
in
nixpeer // {
  module = { lib, ... }: {
    imports = [ ./nix/module.nix ];
    services.nixpeer.package = lib.mkDefault nixpeer;
  };
}
