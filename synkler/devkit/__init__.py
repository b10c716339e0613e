"""A relay on one machine, for the demo, the tests and the benchmark: a private sshd on loopback, a
local relay of the three roles as subprocesses, and the demo. Not used by an agent in production."""
