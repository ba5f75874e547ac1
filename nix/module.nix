# NixOS module of the nixpeer agent: services.nixpeer.
#
# It wires NixOS once to the files the agent manages at run time, so that
# the agent never needs a nixos-rebuild to change substituters, trusted
# keys or the ssh keys allowed to fetch:
#   /var/lib/nixpeer/nix.conf                 pulled in by nix.conf (!include)
#   /var/lib/nixpeer/authorized_keys.d/%u     read by sshd (nix-ssh's keys)
# and runs the agent as a hardened Type=notify service with a watchdog.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkIf mkOption types;

  cfg = config.services.nixpeer;
  stateDir = "/var/lib/nixpeer";
  settingsFormat = pkgs.formats.json { };
  hardening = import ./hardening.nix;

  # Fields left unset (null) are left out of the file: the agent's
  # defaults apply.
  dropNulls = v:
    if builtins.isAttrs v then
      lib.mapAttrs (_: dropNulls) (lib.filterAttrs (_: x: x != null) v)
    else if builtins.isList v then map dropNulls v
    else v;

  # JSON is YAML too: the agent reads this as its desired-state file.
  configFile =
    if cfg.configFile != null
    then cfg.configFile
    else settingsFormat.generate "nixpeer.json" ({ apiVersion = "nixpeer/v1"; } // dropNulls cfg.settings);

  # The desired state as the agent will read it: settings, or configFile
  # read at evaluation time (JSON directly; YAML through yq, an
  # import-from-derivation) so that the defaults below follow it too.
  desired =
    if cfg.configFile == null then cfg.settings
    else if lib.hasSuffix ".json" (toString cfg.configFile) then builtins.fromJSON (builtins.readFile cfg.configFile)
    else builtins.fromJSON (builtins.readFile (pkgs.runCommand "nixpeer-desired.json" { nativeBuildInputs = [ pkgs.yq-go ]; }
      "yq --output-format=json . ${cfg.configFile} > $out"));

  # This host's entry: the one host names, or else the one whose name or
  # address is the host name (as the agent finds itself).
  hostName = config.networking.hostName or "";
  thisHost =
    if cfg.host != null
    then lib.findFirst (h: h.name == cfg.host) null (desired.hosts or [ ])
    else lib.findFirst (h: h.name == hostName || h.address == hostName) null (desired.hosts or [ ]);
  # What this host's entry says of serving: null when it does not serve.
  thisServe = if thisHost == null then null else thisHost.serve or null;
  fileProtocol = if thisServe == null then null else thisServe.protocol or "ssh";

  # An IPv6 address is bracketed in host:port.
  metricsListen =
    if lib.hasInfix ":" cfg.metrics.listenAddress && !(lib.hasPrefix "[" cfg.metrics.listenAddress)
    then "[${cfg.metrics.listenAddress}]:${toString cfg.metrics.port}"
    else "${cfg.metrics.listenAddress}:${toString cfg.metrics.port}";

  nullOr = t: description: mkOption { type = types.nullOr t; default = null; inherit description; };

  serveType = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      protocol = nullOr (types.enum [ "ssh" "ssh-ng" ]) "How consumers fetch: ssh (nix-store --serve, the default) or ssh-ng (the Nix daemon protocol).";
      keyName = nullOr types.str "The binary-cache signing key's name (default: the name of a pinned publicKey, else the host's address).";
      keyGeneration = nullOr types.ints.positive "The generation of the signing key to sign with (default 1); raising it rotates the key without a hard cut.";
      publicKey = nullOr types.str "A pin of the binary-cache public key, NAME:BASE64.";
      signClosure = nullOr types.str "The closure signed once when the key is made (default /run/current-system).";
    };
  };

  hostType = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      name = mkOption { type = types.strMatching "[a-z0-9]([a-z0-9-]*[a-z0-9])?"; description = "The host's name: a lowercase DNS label, unique in the file."; };
      address = mkOption { type = types.str; description = "How peers reach the host: a DNS name or an IP address."; };
      platform = nullOr (types.enum [ "nixos" "nixos-module" "nix" ]) "Where the agent puts the Nix settings (default nixos: the files this module wires in).";
      peerPort = nullOr types.port "The agent's peer port (default 7722).";
      sshPort = nullOr types.port "The host's SSH port (default 22).";
      hostKey = nullOr types.str "A pin of the host's SSH host key, \"ssh-ed25519 AAAA...\".";
      clientKey = nullOr types.str "A pin of the SSH client key the host fetches with.";
      apply = nullOr (types.listOf types.str) "The command run after the agent changes Nix settings (default: restart nix-daemon).";
      sshdReload = nullOr (types.listOf types.str) "The command that has sshd read its host key again, run when nixpeer rotate host-key swaps it (for example [ \"systemctl\" \"reload\" \"sshd.service\" ]).";
      serve = nullOr serveType "Present ({ }) when the host shares its Nix store over SSH.";
      substituteFrom = nullOr (types.listOf types.str) "The hosts this one fetches from, by name, first asked first.";
    };
  };
in
{
  options.services.nixpeer = {
    enable = mkEnableOption "the nixpeer agent, which shares Nix stores between the hosts of a fleet";

    package = mkOption {
      type = types.package;
      default = pkgs.nixpeer or (pkgs.callPackage ./package.nix { });
      defaultText = lib.literalExpression "pkgs.nixpeer, or the flake's package";
      description = "The nixpeer package.";
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          apiVersion = mkOption { type = types.enum [ "nixpeer/v1" ]; default = "nixpeer/v1"; description = "The version of the desired-state format."; };
          trust = nullOr (types.either (types.enum [ "approve" "tofu" "pinned" ]) (types.submodule {
            options = {
              mode = mkOption { type = types.enum [ "approve" "tofu" "pinned" "ca" ]; description = "The trust mode."; };
              hostCAs = nullOr (types.listOf types.str) "With mode ca, the public keys of the CAs that sign the hosts' SSH host certificates.";
            };
          })) "How peers' host keys are trusted: approve (the default: a key not pinned waits for nixpeer trust approve), pinned, tofu (first use), or { mode = \"ca\"; hostCAs = [ \"ssh-ed25519 AAAA... fleet-ca\" ]; } (SSH host certificates).";
          hosts = mkOption { type = types.listOf hostType; default = [ ]; description = "The hosts of the fleet: the same list on every host."; };
        };
      };
      default = { };
      description = ''
        The desired state (the same on every host), written as a JSON (hence
        YAML) file and passed to `nixpeer run --config`. Ignored when
        `configFile` is set.
      '';
    };

    configFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "A desired-state file to use instead of `settings`.";
    };

    host = mkOption {
      type = types.nullOr (types.strMatching "[a-z0-9]([a-z0-9-]*[a-z0-9])?");
      default = null;
      description = "This host's name in the desired state (`--host`); by default the agent matches the host name.";
    };

    serve = mkOption {
      type = types.bool;
      default = thisServe != null;
      defaultText = lib.literalExpression "whether this host's entry in settings or configFile has serve";
      description = ''
        Whether this host serves its Nix store to the others over SSH
        (nix.sshServe). The agent manages the keys allowed to fetch.
      '';
    };

    serveProtocol = mkOption {
      type = types.enum [ "ssh" "ssh-ng" ];
      default = if fileProtocol != null then fileProtocol else "ssh";
      defaultText = lib.literalExpression "this host's serve.protocol in settings or configFile, or ssh";
      description = "nix.sshServe.protocol of a serving host.";
    };

    peerPort = mkOption {
      type = types.port;
      default = if thisHost != null && (thisHost.peerPort or null) != null then thisHost.peerPort else 7722;
      defaultText = lib.literalExpression "this host's peerPort in settings, or 7722";
      description = "TCP port on which the agent talks to its peers.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = true;
      description = "Whether to open `peerPort` in the firewall.";
    };

    metrics = {
      enable = mkEnableOption "Prometheus metrics over TCP (the status socket always serves /metrics)";
      listenAddress = mkOption {
        type = types.str;
        default = "127.0.0.1";
        description = "Address the metrics listen on.";
      };
      port = mkOption {
        type = types.port;
        default = 9772;
        description = "Port the metrics listen on.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Whether to open the metrics port in the firewall.";
      };
    };

    logLevel = mkOption {
      type = types.enum [ "debug" "info" "warn" "error" ];
      default = "info";
      description = "The agent's log level.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.configFile == null || (cfg.settings.hosts or [ ]) == [ ];
        message = "services.nixpeer: set either settings or configFile, not both.";
      }
      {
        # sshd's ForceCommand (from nix.sshServe.protocol) wins over the
        # agent's command=: the two ends would speak different protocols.
        assertion = !cfg.serve || fileProtocol == null || fileProtocol == cfg.serveProtocol;
        message = "services.nixpeer: serveProtocol is ${cfg.serveProtocol} but this host's serve.protocol in the desired state is ${toString fileProtocol}; make them agree.";
      }
    ];

    # nixpeer status, plan, wait... on the PATH.
    environment.systemPackages = [ cfg.package ];

    # The last line of /etc/nix/nix.conf (mkAfter: after every other
    # module's extraOptions), so that what the agent writes there is not
    # overridden by a later setting. !include ignores a missing file
    # (before the agent's first run).
    nix.extraOptions = lib.mkAfter ''
      !include ${stateDir}/nix.conf
    '';

    # sshd reads the keys of nix-ssh, and of nix-ssh alone (a file named
    # root there would otherwise be a root login), from the agent's file
    # too, next to NixOS's /etc/ssh/authorized_keys.d/%u; and nix-ssh may
    # forward nothing (nix.sshServe leaves stream-local forwarding on,
    # which would hand a client the daemon's socket).
    services.openssh.extraConfig = lib.mkAfter ''
      Match User nix-ssh
          AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u ${stateDir}/authorized_keys.d/%u
          DisableForwarding yes
    '';

    nix.sshServe = mkIf cfg.serve {
      enable = true;
      protocol = cfg.serveProtocol;
    };

    networking.firewall.allowedTCPPorts =
      lib.optionals cfg.openFirewall [ cfg.peerPort ]
      ++ lib.optionals (cfg.metrics.enable && cfg.metrics.openFirewall) [ cfg.metrics.port ];

    # Members may read `nixpeer status`; only root may change anything.
    users.groups.nixpeer = { };

    systemd.services.nixpeer = {
      description = "nixpeer agent (shares Nix stores between hosts over SSH)";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "nix-daemon.service" "sshd.service" ];
      # nix for show-config and signing, ssh-keygen, systemctl for the
      # default apply (restart nix-daemon).
      path = [ config.nix.package pkgs.openssh config.systemd.package ];
      serviceConfig = hardening.service // {
        ExecStart = lib.escapeShellArgs (
          [ "${cfg.package}/bin/nixpeer" "run" "--config" "${configFile}" "--log-level" cfg.logLevel ]
          ++ lib.optionals (cfg.host != null) [ "--host" cfg.host ]
          ++ lib.optionals cfg.metrics.enable [ "--metrics-listen" metricsListen ]
        );
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        # /root is read-only under ProtectHome; root's .ssh must exist to
        # be written (known_hosts, the ssh config block).
        ExecStartPre = "+${pkgs.coreutils}/bin/mkdir -p -m 0700 /root/.ssh";
        # /var/lib/nixpeer: 0755 on NixOS, since nix.conf includes a file
        # from it that every Nix user must be able to read (an unreadable
        # !include is skipped silently). The agent keeps its keys in 0700
        # subdirectories.
        StateDirectoryMode = "0755";
      };
    };
  };
}
