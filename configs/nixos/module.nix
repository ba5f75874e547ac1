# NixOS module of the nixpeer agent.
#
# It wires NixOS once to the files the agent manages at run time, so that
# the agent never needs a nixos-rebuild to change substituters, trusted
# keys or the ssh keys allowed to fetch:
#   /var/lib/nixpeer/nix.conf                 pulled in by nix.conf (!include)
#   /var/lib/nixpeer/authorized_keys.d/%u     read by sshd (nix-ssh's keys)
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;

  cfg = config.services.nixpeer;
  stateDir = "/var/lib/nixpeer";
  settingsFormat = pkgs.formats.json { };

  # JSON is YAML too: the agent reads this as its desired-state file.
  configFile =
    if cfg.configFile != null
    then cfg.configFile
    else settingsFormat.generate "nixpeer.json" cfg.settings;
in
{
  options.services.nixpeer = {
    enable = mkEnableOption "the nixpeer agent, which shares Nix stores between the hosts of a fleet";

    package = mkOption {
      type = types.package;
      description = "The nixpeer package (built from the nixpeer repository).";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      description = ''
        The agent's desired state, written to a JSON (hence YAML) file and
        passed to `nixpeer run --config`. Ignored when `configFile` is set.
      '';
    };

    configFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "A desired-state file to use instead of `settings`.";
    };

    host = mkOption {
      type = types.nullOr (types.strMatching "[A-Za-z0-9][A-Za-z0-9._-]*");
      default = null;
      description = "This host's name in the desired state (`--host`); the agent's default when null.";
    };

    serve = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Whether this host serves its Nix store to the others over SSH
        (nix.sshServe). The agent manages the keys allowed to fetch.
      '';
    };

    serveProtocol = mkOption {
      type = types.enum [ "ssh" "ssh-ng" ];
      default = "ssh";
      description = "nix.sshServe.protocol of a serving host.";
    };

    peerPort = mkOption {
      type = types.port;
      default = 7722;
      description = "TCP port on which the agent talks to its peers.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = true;
      description = "Whether to open `peerPort` in the firewall.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.configFile == null || cfg.settings == { };
        message = "services.nixpeer: set either settings or configFile, not both.";
      }
    ];

    # Appended verbatim as the last line of /etc/nix/nix.conf, so that what
    # the agent writes there is not overridden by a later setting. !include
    # ignores a missing file (before the agent's first run).
    nix.extraOptions = ''
      !include ${stateDir}/nix.conf
    '';

    # sshd reads the keys of nix-ssh (and only those the agent writes) here
    # too, next to /etc/ssh/authorized_keys.d/%u.
    services.openssh.authorizedKeysFiles = [ "${stateDir}/authorized_keys.d/%u" ];

    nix.sshServe = mkIf cfg.serve {
      enable = true;
      protocol = cfg.serveProtocol;
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ cfg.peerPort ];

    systemd.services.nixpeer = {
      description = "nixpeer agent";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "nix-daemon.service" ];
      path = [ config.nix.package pkgs.openssh ];
      serviceConfig = {
        Type = "notify";
        ExecStart = lib.escapeShellArgs (
          [ "${cfg.package}/bin/nixpeer" "run" "--config" "${configFile}" ]
          ++ lib.optionals (cfg.host != null) [ "--host" cfg.host ]
        );
        # /var/lib/nixpeer: 0755, since nix.conf includes a file from it
        # that every Nix user must be able to read (an unreadable !include
        # is skipped silently). The agent keeps its keys in 0700
        # subdirectories.
        StateDirectory = "nixpeer";
        StateDirectoryMode = "0755";
        RuntimeDirectory = "nixpeer";
        RuntimeDirectoryMode = "0750";
        Restart = "on-failure";
        RestartSec = 5;
      };
    };
  };
}
