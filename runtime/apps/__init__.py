"""Applications that consume QKD keys (the seed papers' use cases), each as a small adapter over
the key delivery interfaces: keys come from the network through ETSI 014 or ETSI 004 only
(`sdqkd.apps.keyclient`), never from a shortcut into a node."""
