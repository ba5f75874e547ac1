# The agent's systemd service settings, shared by the NixOS module
# (nix/module.nix) and checked to be the same as systemd/nixpeer.service
# (internal/nixfiles tests): change both together. Only ExecStart,
# ExecStartPre, ExecReload (store paths on NixOS) and StateDirectoryMode
# (0755 on NixOS, for nix.conf's !include) differ.
{
  service = {
    Type = "notify";
    NotifyAccess = "main";
    Restart = "on-failure";
    RestartSec = "2s";
    WatchdogSec = "60s";
    TimeoutStartSec = "120s";

    # /var/lib/nixpeer (keys, state.db) and /run/nixpeer (the status socket).
    StateDirectory = "nixpeer";
    RuntimeDirectory = "nixpeer";
    RuntimeDirectoryMode = "0755";
    UMask = "0077";

    # Directories, not single files, in ReadWritePaths: a rename onto a
    # bind-mounted file fails.
    ProtectSystem = "strict";
    ProtectHome = "read-only";
    ReadWritePaths = [ "/root/.ssh" "-/etc/nix" "-/etc/ssh" "-/etc/nixos" ];
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@resources" ];
    NoNewPrivileges = true;
    PrivateMounts = true;
    ProtectProc = "invisible";
    # Root for its files, and no more. An apply that needs more (a
    # nixos-rebuild) needs this widened.
    CapabilityBoundingSet = [ "CAP_CHOWN" "CAP_DAC_OVERRIDE" "CAP_FOWNER" ];
    AmbientCapabilities = "";

    MemoryHigh = "256M";
    MemoryMax = "512M";
    TasksMax = 256;
  };
}
