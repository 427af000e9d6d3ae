"""The scheduler daemon: the framed protocol around d7y.core.scheduling."""
