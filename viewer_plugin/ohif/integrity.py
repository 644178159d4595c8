"""``python -m viewer_plugin.ohif.integrity TARBALL SRI``: is this the ``@ohif/app`` tarball
we pinned? ``make ohif`` checks what ``npm pack`` fetched against the Subresource Integrity
string the registry published for the version (``npm view @ohif/app@<v> dist.integrity``),
written into the Makefile and the Dockerfile, before anything of it is unpacked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
from collections.abc import Sequence
from pathlib import Path

ALGORITHMS = ("sha512", "sha384", "sha256")


def integrity_of(path: Path, algorithm: str = "sha512") -> str:
    """``<algorithm>-<base64 digest>`` of the file, as npm writes ``dist.integrity``."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{algorithm}-{base64.b64encode(digest.digest()).decode()}"


def check(path: Path, expected: str) -> None:
    """ValueError unless ``path`` has the integrity ``expected`` (one SRI hash)."""
    algorithm, sep, _ = expected.partition("-")
    if not sep or algorithm not in ALGORITHMS:
        raise ValueError(f"not an SRI hash of {', '.join(ALGORITHMS)}: {expected!r}")
    actual = integrity_of(path, algorithm)
    if not hmac.compare_digest(actual, expected):
        raise ValueError(f"{path.name}: integrity {actual} is not the pinned {expected}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m viewer_plugin.ohif.integrity TARBALL SRI", file=sys.stderr)
        return 2
    try:
        check(Path(args[0]), args[1])
    except (OSError, ValueError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
