"""Reading tables (TSV / CSV / JSONL) and turning columns into a :class:`TextDataset`."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from splitpriv.data.core import DatasetNotFoundError, TextDataset, sample_indices

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _raise_field_limit() -> None:
    limit = sys.maxsize
    while True:  # sys.maxsize overflows a C long on some platforms
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def read_table(path: str | os.PathLike, fmt: str | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """Column names and rows (``{column: value}``, values as strings) of a TSV / CSV / JSONL file.

    ``.tsv`` is read with quoting disabled (as the GLUE / shared data files), ``.csv`` with standard
    CSV quoting, ``.jsonl`` as one JSON object per line.
    """
    p = Path(path)
    if fmt is None:
        fmt = FORMATS.get(p.suffix.lower())
        if fmt is None:
            raise ValueError(f"{p}: unsupported file extension {p.suffix!r}; use one of {sorted(FORMATS)}")
    if not p.is_file():
        raise DatasetNotFoundError(f"file not found: {p}")
    with open(p, encoding="utf-8-sig", newline="" if fmt != "jsonl" else None) as f:
        if fmt == "jsonl":
            return _read_jsonl(f, p)
        _raise_field_limit()
        if fmt == "tsv":
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(f)
        header = next(reader, None)
        if not header or all(not h.strip() for h in header):
            raise ValueError(f"{p}: empty file (no header line)")
        header = [h.strip() for h in header]
        rows = []
        for line_no, values in enumerate(reader, start=2):
            if not values:  # blank line
                continue
            if len(values) != len(header):
                raise ValueError(
                    f"{p}: line {line_no} has {len(values)} fields but the header has {len(header)} {header}"
                    + (" (a TSV must not contain tabs inside a field)" if fmt == "tsv" else "")
                )
            rows.append(dict(zip(header, values)))
    if not rows:
        raise ValueError(f"{p}: empty file (a header but no rows)")
    return header, rows


def _read_jsonl(f, p: Path) -> tuple[list[str], list[dict[str, str]]]:
    columns: dict[str, None] = {}
    rows = []
    for line_no, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: line {line_no} is not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{p}: line {line_no} is a JSON {type(obj).__name__}, expected an object")
        row = {k: _as_str(v) for k, v in obj.items()}
        columns.update(dict.fromkeys(row))
        rows.append(row)
    if not rows:
        raise ValueError(f"{p}: empty file (no JSON lines)")
    return list(columns), rows


def _as_str(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, int, float)):
        return json.dumps(v)  # true / 3 / 0.5
    return json.dumps(v, ensure_ascii=False)


def _sorted_names(values: set[str]) -> tuple[str, ...]:
    try:
        return tuple(sorted(values, key=lambda v: (float(v), v)))
    except ValueError:
        return tuple(sorted(values))


def encode_labels(
    values: Sequence[str], label_names: Sequence[str] | None, where: str
) -> tuple[list[int], tuple[str, ...]]:
    """Map string labels to ids by ``label_names`` (given, else the sorted unique values; numeric sort when
    all look numeric). With ``label_names`` given, a value may also be an integer id in range."""
    for i, v in enumerate(values):
        if v == "":
            raise ValueError(f"{where}: row {i + 1} has an empty label")
    if label_names is None:
        names = _sorted_names(set(values))
    else:
        names = tuple(str(n) for n in label_names)
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: label_names has duplicates: {names}")
    index = {n: i for i, n in enumerate(names)}
    ids = []
    for i, v in enumerate(values):
        y = index.get(v)
        if y is None and v.lstrip("-").isdigit() and 0 <= int(v) < len(names):
            y = int(v)
        if y is None:
            raise ValueError(f"{where}: row {i + 1} has label {v!r}, which is not in label_names {names}")
        ids.append(y)
    return ids, names


def table_to_dataset(
    columns: list[str],
    rows: list[dict[str, str]],
    *,
    name: str,
    split: str,
    source: str,
    text_column: str,
    label_column: str | None,
    attribute_columns: Sequence[str] = (),
    label_names: Sequence[str] | None = None,
    strip: bool = True,
) -> TextDataset:
    """Build a dataset from rows; every missing column or missing value is a ``ValueError`` naming it."""
    wanted = [text_column] + ([label_column] if label_column else []) + list(attribute_columns)
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"{source}: column(s) {missing} not found; columns found: {columns}")
    texts = []
    for i, r in enumerate(rows):
        t = r.get(text_column, "")
        t = t.strip() if strip else t
        if not t.strip():
            raise ValueError(f"{source}: row {i + 1} has an empty {text_column!r}")
        texts.append(t)
    labels = None
    names: tuple[str, ...] = tuple(label_names) if label_names is not None else ()
    if label_column:
        labels, names = encode_labels([r.get(label_column, "").strip() for r in rows], label_names, source)
    attributes = {c: [r.get(c, "").strip() for r in rows] for c in attribute_columns}
    return TextDataset(name, split, texts, labels, names, attributes, source)


def load_file(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    attribute_columns: Sequence[str] = (),
    label_names: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> TextDataset:
    """Load your own ``.csv`` / ``.tsv`` / ``.jsonl`` file (format by extension).

    Labels are mapped to ids by ``label_names`` (or the sorted unique values); ``label_column=None``
    loads texts only. ``limit`` keeps a seeded random subset of that many rows.
    """
    if isinstance(attribute_columns, str):
        attribute_columns = (attribute_columns,)
    p = Path(path)
    columns, rows = read_table(p)
    ds = table_to_dataset(
        columns,
        rows,
        name=p.stem,
        split="file",
        source=str(p),
        text_column=text_column,
        label_column=label_column,
        attribute_columns=attribute_columns,
        label_names=label_names,
    )
    return ds.subset(sample_indices(len(ds), limit, seed))
