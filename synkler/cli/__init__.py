"""The command line: main (entry point and dispatch), parser, and one cmd_* module per command or family
of commands (with checks, migrate, entries: their pure parts). The top wing: it may import every other."""
