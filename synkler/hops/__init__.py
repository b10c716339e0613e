"""How data moves and is checked: rsync over ssh, md5 of entries, hashing while rsync writes, cleanup
scripts. Everything here runs on worker threads (or in subprocesses) and never touches the broker or
the state database."""
