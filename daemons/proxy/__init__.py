"""dfdaemon's HTTP proxy and registry mirror (port 4001)."""
