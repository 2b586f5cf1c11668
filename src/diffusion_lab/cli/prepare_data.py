"""``python -m diffusion_lab.cli.prepare_data DATA_DIR [NAME ...]``: prepare and verify the datasets (``make data``).

Reads the registry sources of :mod:`diffusion_lab.data.sources`; prints one line per dataset.
"""

from __future__ import annotations

import sys
from pathlib import Path

from diffusion_lab.data.sources import DATASETS, DataError, prepare


def main(argv: list[str] | None = None) -> int:
    """``python -m diffusion_lab.cli.prepare_data DATA_DIR [NAME ...]``: prepare and verify datasets."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m diffusion_lab.cli.prepare_data DATA_DIR [mnist] [fashion_mnist]", file=sys.stderr)
        return 2
    data_dir, names = Path(args[0]), args[1:] or list(DATASETS)
    status = 0
    for name in names:
        try:
            path = prepare(name, data_dir)
            print(f"{name}: ready in {path}")
        except DataError as err:
            print(f"{name}: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
