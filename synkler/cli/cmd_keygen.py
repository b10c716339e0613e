"""`synkler keygen FILE`: the key download signs its delivery receipts with, and the public half that
upload and central pin (docs/security.md, "Delivery receipts").

Like ssh-keygen: the private key is written once, 0600, never over an existing file; the public key
is printed, as the line to add to upload's and central's configs. `--public` prints the public key
of an existing private key again.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import receipts
from ..errors import ConfigError, ExitStatus


def cmd_keygen(path: str, *, public_only: bool) -> int:
    target = Path(path)
    if public_only:
        try:
            key = receipts.load_private_key(target)
        except (OSError, ValueError) as e:
            raise ConfigError(target, None, f"cannot read a receipt key: {e}") from None
    else:
        key = receipts.new_key()
        try:
            # O_EXCL: never over an existing file (a key in use); 0600 from the first byte.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(target, None, "exists already: keygen never overwrites a key") from None
        except OSError as e:
            raise ConfigError(target, None, f"cannot write: {e.strerror or e}") from None
        with os.fdopen(fd, "wb") as out:
            out.write(receipts.private_bytes(key))
            out.flush()
            os.fsync(out.fileno())
        print(f"# private key written to {target} (0600): in download's config,")
        print(f"receipt_key: {target.resolve()}")
        print("# and in upload's and central's configs (the public key, safe to copy):")
    print(f"download_public_key: {receipts.public_text(key)}")
    return ExitStatus.OK
