"""Linux primitives through one libc binding: inotify, file leases, renameat2, careful removal,
free space. Nothing here knows about entries or roles."""
