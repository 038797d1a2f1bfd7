#!/usr/bin/env python
"""Regenerate the WikiText-2 sample shipped in the package (``src/splitpriv/data/embedded/wikitext2_sample``).

    python scripts/make_embedded_wikitext2.py [--data-dir DIR] [--check]

Reads ``DIR/wikitext2/{valid,test}.txt`` (default ``$SPLITPRIV_DATA_DIR``, else ``/work/shared/data``) and writes
``valid.txt`` and ``test.txt``: ``load_public_text("wikitext2", split, limit=1300, seed=0)`` on the full files, one
sentence per line (the rule in the sample's ``SOURCE.md``). ``--check`` compares instead and exits 1 on a difference.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

N_PER_SPLIT = 1300
SEED = 0
OUT = Path(__file__).resolve().parents[1] / "src" / "splitpriv" / "data" / "embedded" / "wikitext2_sample"


def build(data_dir: Path) -> dict[str, str]:
    """File name -> content of the sample drawn from the full WikiText-2 files under ``data_dir``."""
    from splitpriv.data import load_public_text

    return {f"{split}.txt": "".join(s + "\n" for s in load_public_text(
        "wikitext2", split, data_dir=data_dir, source="dir", limit=N_PER_SPLIT, seed=SEED)) for split in ("valid", "test")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("SPLITPRIV_DATA_DIR") or "/work/shared/data"))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    files = build(args.data_dir)
    differ = [n for n, text in files.items() if (OUT / n).read_text(encoding="utf-8") != text] if args.check else []
    if not args.check:
        for name, text in files.items():
            (OUT / name).write_text(text, encoding="utf-8")
    print("differs: " + ", ".join(differ) if differ else f"ok: {', '.join(files)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
