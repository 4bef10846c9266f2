"""The LKMS (local key management system) of an sdqkd node: key store, ETSI GS QKD 014 and 004
key delivery, inter-LKMS key synchronisation and relay. Start with `sdqkd.lkms.node.Lkms`."""
