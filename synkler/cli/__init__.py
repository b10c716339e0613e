"""The command line: the parser (main) and the commands. The top wing: it may import every other."""
