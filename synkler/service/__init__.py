"""The agent as a long-running service: log lines, the pidfile, detaching as a daemon."""
