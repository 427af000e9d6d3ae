"""The peer daemon (dfdaemon): download, verify, store, and serve tasks."""
