#!/usr/bin/env python
"""Regenerate the SST-2 sample shipped in the package (``src/splitpriv/data/embedded/sst2_sample``).

    python scripts/make_embedded_sst2.py [--data-dir DIR] [--out DIR] [--check]

Reads the full GLUE SST-2 files from ``DIR/sst2`` (default ``$SPLITPRIV_DATA_DIR``, else
``/work/shared/data``) and writes ``train.tsv``, ``dev.tsv`` and ``SOURCE.md``. Deterministic:

* ``train.tsv``: rows of SST-2 train whose stripped sentence has at least 4 whitespace-separated tokens
  (PTB tokens, punctuation included) and whose sentence is not an exact repeat of an earlier row, then
  ``random.Random(0).sample`` of 4,000 of them, written in the original file order;
* ``dev.tsv``: the full SST-2 dev set (872 rows);
* both with the GLUE header ``sentence\\tlabel`` and the trailing space of each sentence stripped.

``--check`` compares instead of writing and exits 1 if the shipped files differ.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import random
import sys
from pathlib import Path

SEED = 0
N_TRAIN = 4000
MIN_WORDS = 4
REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "src" / "splitpriv" / "data" / "embedded" / "sst2_sample"


def _read(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header != ["sentence", "label"]:
            raise SystemExit(f"{path}: unexpected header {header}")
        return [(s.strip(), y) for s, y in reader]


def _tsv(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    buf.write("sentence\tlabel\n")
    for s, y in rows:
        if "\t" in s or "\n" in s:
            raise SystemExit(f"sentence contains a tab or newline: {s!r}")
        buf.write(f"{s}\t{y}\n")
    return buf.getvalue()


def sample_train(rows: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """The sampled rows (file order) and the number of eligible rows."""
    seen: set[str] = set()
    eligible = []
    for i, (s, _) in enumerate(rows):
        if len(s.split()) >= MIN_WORDS and s not in seen:
            eligible.append(i)
        seen.add(s)
    picked = sorted(random.Random(SEED).sample(eligible, N_TRAIN))
    return [rows[i] for i in picked], len(eligible)


def _counts(rows: list[tuple[str, str]]) -> tuple[int, int]:
    return sum(y == "0" for _, y in rows), sum(y == "1" for _, y in rows)


def build(data_dir: Path) -> dict[str, str]:
    """``{file name: content}`` of the sample, from the full SST-2 files in ``data_dir/sst2``."""
    train_full = _read(data_dir / "sst2" / "train.tsv")
    dev = _read(data_dir / "sst2" / "dev.tsv")
    train, n_eligible = sample_train(train_full)
    files = {"train.tsv": _tsv(train), "dev.tsv": _tsv(dev)}
    files["SOURCE.md"] = _source_md(files, len(train_full), n_eligible, _counts(train), _counts(dev))
    return files


def _source_md(files, n_full, n_eligible, train_counts, dev_counts) -> str:
    def sha(name):
        data = files[name].encode("utf-8")
        return f"{hashlib.sha256(data).hexdigest()}  {name}  ({len(data):,} bytes)"

    return f"""# SST-2 sample (embedded in the package)

A small sample of the GLUE SST-2 binary sentiment data, shipped so that `splitpriv` runs without a
data folder or network: `load_dataset("sst2-sample", "train" | "dev")`.

| file | rows | negative (0) | positive (1) |
| --- | --- | --- | --- |
| `train.tsv` | {N_TRAIN:,} | {train_counts[0]:,} | {train_counts[1]:,} |
| `dev.tsv` | {sum(dev_counts):,} | {dev_counts[0]:,} | {dev_counts[1]:,} |

```
{sha("train.tsv")}
{sha("dev.tsv")}
```

## Format

As GLUE: header `sentence\\tlabel`, UTF-8, LF, no quoting (read with `quoting=csv.QUOTE_NONE`),
`label` 0 = negative, 1 = positive. Sentences are lower-cased and PTB-tokenised as in GLUE; the
trailing space GLUE leaves after every sentence was stripped.

## Sampling rule (deterministic)

* `train.tsv`: from the {n_full:,} rows of GLUE SST-2 `train.tsv`, keep rows whose stripped sentence
  has at least {MIN_WORDS} whitespace-separated tokens (punctuation tokens count; shorter items are
  phrase fragments such as `good` or `a bit`, of little use for training) and that are not an exact
  repeat of an earlier row's sentence: {n_eligible:,} rows. Draw
  `random.Random({SEED}).sample(eligible_row_indices, {N_TRAIN})` and write the drawn rows in the
  original file order.
* `dev.tsv`: the full GLUE SST-2 dev set (all {sum(dev_counts):,} rows, file order), so results on the
  sample are comparable with results on the full data.

Regenerate (or verify with `--check`) from the full data:

```
python scripts/make_embedded_sst2.py --data-dir "$SPLITPRIV_DATA_DIR"
```

## Full data

The full SST-2 (67,349 train / 872 dev / 1,821 unlabelled test rows) is `load_dataset("sst2")`: from the
folder named by `SPLITPRIV_DATA_DIR` (`sst2/train.tsv`, `dev.tsv`, `test.tsv`, byte-identical GLUE
files) or, when that is unset, from the Hugging Face Hub (`nyu-mll/glue`, formerly `glue`, config `sst2`).

## Citation

* Richard Socher, Alex Perelygin, Jean Wu, Jason Chuang, Christopher D. Manning, Andrew Ng and
  Christopher Potts. 2013. *Recursive Deep Models for Semantic Compositionality Over a Sentiment
  Treebank.* EMNLP 2013.
* Alex Wang, Amanpreet Singh, Julian Michael, Felix Hill, Omer Levy and Samuel R. Bowman. 2019.
  *GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding.* ICLR 2019.

## Licence

The SST authors publish the treebank for research without an explicit licence (dataset catalogues
such as TFDS list it as "no known license"); GLUE redistributes it and asks users to cite the
original dataset paper. Treat as research-use data and cite both papers above.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_dir = os.environ.get("SPLITPRIV_DATA_DIR") or "/work/shared/data"
    ap.add_argument("--data-dir", type=Path, default=Path(default_dir), help=f"default: {default_dir}")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--check", action="store_true", help="verify the files in --out instead of writing")
    args = ap.parse_args(argv)
    files = build(args.data_dir)
    if args.check:
        stale = [n for n, text in files.items() if not (args.out / n).is_file() or (args.out / n).read_text("utf-8") != text]
        print("up to date" if not stale else f"differ: {stale}")
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8", newline="\n")
    total = sum(len(t.encode("utf-8")) for t in files.values())
    print(f"wrote {sorted(files)} to {args.out} ({total:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
