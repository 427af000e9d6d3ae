"""d7y.daemons: the I/O shells (dfdaemon, scheduler, manager) and the command-line tools."""
