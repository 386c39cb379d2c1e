"""RunPod REST v2 client (templates, catalog, pods, account SSH keys) and its typed errors."""
