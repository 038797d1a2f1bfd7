"""``load_dataset`` / ``load_public_text``: a local data folder, the Hugging Face Hub, or the embedded sample."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from splitpriv.data import hub
from splitpriv.data.core import DatasetNotFoundError, TextDataset, sample_indices
from splitpriv.data.files import read_table, table_to_dataset
from splitpriv.data.text import wikitext_sentences

ENV_VAR = "SPLITPRIV_DATA_DIR"
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
SOURCES = ("auto", "dir", "hub", "embedded")
SST2_LABELS = ("negative", "positive")


@dataclass(frozen=True)
class _Spec:
    folder: str
    splits: tuple[str, ...]
    text_column: str = "text"
    label_column: str | None = "label"
    label_names: tuple[str, ...] = ()
    attribute_columns: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


_SPECS = {
    "sst2": _Spec("sst2", ("train", "dev", "test"), "sentence", "label", SST2_LABELS),
    "sst2-sample": _Spec("sst2_sample", ("train", "dev"), "sentence", "label", SST2_LABELS),
    "financial_phrasebank": _Spec(
        "financial_phrasebank", ("train", "dev", "test"), label_names=hub.FPB_LABELS, options=("agreement",)
    ),
    "blog_authorship": _Spec(
        "blog_authorship",
        ("train", "dev", "test"),
        label_names=hub.BLOG_INDUSTRIES,
        attribute_columns=("gender", "age", "age_group"),
    ),
    "trustpilot": _Spec("trustpilot", ("train", "test"), label_column=None, attribute_columns=("gender", "age", "age_group")),
}
_ALIASES = {
    "sst_2": "sst2",
    "sst2_sample": "sst2-sample",
    "fpb": "financial_phrasebank",
    "blog_authorship_corpus": "blog_authorship",
    "blogs": "blog_authorship",
}
_DEV_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev"}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_SPECS)


def data_dir() -> Path | None:
    """The folder named by ``SPLITPRIV_DATA_DIR`` (laid out like ``shared/data``), or ``None`` if unset."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def canonical_dataset_name(name: str) -> str:
    """The registered key of a dataset name or one of its aliases; ValueError naming the available ones."""
    key = str(name).strip().lower()
    if key in _SPECS:
        return key
    key = key.replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()}")
    return key


_canonical = canonical_dataset_name


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; use one of {SOURCES}")


def _check_split(name: str, split: str, splits: tuple[str, ...], aliases: dict[str, str]) -> str:
    s = str(split).strip().lower()
    s = aliases.get(s, s)
    if s not in splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; splits: {list(splits)}")
    return s


def _root(data_dir_arg) -> tuple[Path | None, str]:
    if data_dir_arg is not None:
        return Path(data_dir_arg).expanduser(), "the data_dir argument"
    return data_dir(), f"${ENV_VAR}"


def _hub_error(name: str, reason: str, via_auto: bool, folder: str) -> DatasetNotFoundError:
    head = f"{ENV_VAR} is not set and the" if via_auto else "The"
    usable = [n for n, where in dataset_availability().items() if where != "hub" and not where.startswith("not ")]
    return DatasetNotFoundError(
        f"{head} Hugging Face Hub could not be reached for {name!r} ({reason}). "
        f"Set {ENV_VAR} to a folder laid out like shared/data (with a '{folder}/' subfolder), "
        f"or use a dataset available offline here: {', '.join(usable)} (`splitpriv datasets` lists them)."
    )


def dataset_availability(data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Where each named dataset would be read from now: ``"embedded"`` (shipped in the package),
    ``"folder <path>"`` (the data folder has it), ``"hub"`` (no folder; the Hub is not declared offline), or
    ``"not available offline: ..."``. Cheap: looks at files and environment variables, never the network."""
    root, _ = _root(data_dir)
    out = {}
    for key, spec in _SPECS.items():
        if key == "sst2-sample":
            out[key] = "embedded"
        elif root is not None and (root / spec.folder / f"{spec.splits[0]}.tsv").is_file():
            out[key] = f"folder {root / spec.folder}"
        elif root is None and not hub.offline_requested() and key != "trustpilot":
            out[key] = "hub"
        else:
            out[key] = (f"not available offline: needs {ENV_VAR} with a '{spec.folder}/' folder"
                        + ("" if key == "trustpilot" else " (or the Hugging Face Hub online)"))
    return out


def _parse_agreement(value) -> int:
    v = str(value).strip().lower().removesuffix("agree").removesuffix("%")
    v = {"all": "100"}.get(v, v)
    if v.isdigit() and int(v) in hub.FPB_CONFIGS:
        return int(v)
    raise ValueError(f"agreement must be one of {sorted(hub.FPB_CONFIGS)} (percent of annotators), got {value!r}")


def load_dataset(
    name: str,
    split: str = "train",
    *,
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    **options,
) -> TextDataset:
    """Load one split of a named dataset (see :func:`available_datasets`).

    ``source="auto"`` reads ``data_dir`` (or ``$SPLITPRIV_DATA_DIR``) when set, else the Hugging Face Hub;
    ``"dir"`` / ``"hub"`` / ``"embedded"`` force one. ``"sst2-sample"`` is always the embedded sample.
    ``limit`` keeps a ``seed``-ed random subset of that many rows (in file order).
    Option: ``agreement=50|66|75|100`` (financial_phrasebank) keeps rows with at least that agreement.
    """
    key = canonical_dataset_name(name)
    _check_source(source)
    spec = _SPECS[key]
    if source == "embedded" and key == "sst2":
        key, spec = "sst2-sample", _SPECS["sst2-sample"]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset {key!r}; supported: {list(spec.options)}")
    split = _check_split(key, split, spec.splits, _DEV_ALIASES)
    agreement = _parse_agreement(options.get("agreement", 50)) if key == "financial_phrasebank" else None

    if key == "sst2-sample":
        ds = _read_local(key, spec, EMBEDDED_DIR / spec.folder / f"{split}.tsv", split, "embedded:sst2_sample")
    elif source == "embedded":
        raise DatasetNotFoundError(f"only SST-2 has an embedded sample ('sst2-sample'), not {key!r}")
    else:
        root, origin = _root(data_dir)
        if source == "dir" or (source == "auto" and root is not None):
            if root is None:
                raise DatasetNotFoundError(f"source='dir' needs data_dir=... or ${ENV_VAR} to be set")
            ds = _load_dir(key, spec, root, origin, split)
        else:
            ds = _load_hub(key, spec, split, agreement, via_auto=source == "auto")
        if agreement is not None and agreement > 50 and ds.attributes.get("agreement") is not None:
            keep = [i for i, a in enumerate(ds.attributes["agreement"]) if int(a) >= agreement]
            ds = ds.subset(keep)
        if "agreement" in ds.attributes:  # filter column only, not a private attribute
            ds = TextDataset(ds.name, ds.split, ds.texts, ds.labels, ds.label_names, {}, ds.source)
    return ds.subset(sample_indices(len(ds), limit, seed))


def _read_local(key: str, spec: _Spec, path: Path, split: str, source: str, extra=()) -> TextDataset:
    columns, rows = read_table(path, "tsv")
    label_column = spec.label_column if spec.label_column in columns or split != "test" else None
    return table_to_dataset(
        columns,
        rows,
        name=key,
        split=split,
        source=source,
        text_column=spec.text_column,
        label_column=label_column,
        attribute_columns=spec.attribute_columns + tuple(extra),
        label_names=spec.label_names or None,
    )


def _load_dir(key: str, spec: _Spec, root: Path, origin: str, split: str) -> TextDataset:
    if not root.is_dir():
        raise DatasetNotFoundError(f"data folder {root} (from {origin}) does not exist")
    path = root / spec.folder / f"{split}.tsv"
    if not path.is_file():
        where = "folder" if not path.parent.is_dir() else "file"
        raise DatasetNotFoundError(
            f"dataset {key!r} split {split!r}: expected the {where} {path if where == 'file' else path.parent} "
            f"(data folder {root} from {origin}, laid out like shared/data)"
        )
    extra = ("agreement",) if key == "financial_phrasebank" else ()
    return _read_local(key, spec, path, split, str(path), extra)


def _load_hub(key: str, spec: _Spec, split: str, agreement: int | None, via_auto: bool) -> TextDataset:
    if key == "trustpilot":
        raise DatasetNotFoundError(
            f"'trustpilot' has no known copy on the Hugging Face Hub; it is only available from a local folder: "
            f"set {ENV_VAR} (or data_dir=) to a folder with trustpilot/train.tsv and trustpilot/test.tsv "
            f"(layout of shared/data)"
            + ("" if not via_auto else f" ({ENV_VAR} is not set)")
        )
    try:
        if key == "sst2":
            texts, labels, source = hub.sst2_from_hub(split)
            return TextDataset(key, split, texts, labels, spec.label_names, {}, source)
        if key == "financial_phrasebank":
            texts, names, source = hub.fpb_from_hub(split, agreement or 50)
            labels = [spec.label_names.index(y) for y in names]
            return TextDataset(key, split, texts, labels, spec.label_names, {}, source)
        if key == "blog_authorship":
            rows, source = hub.blog_from_hub(split)
            cols = ["text", "label", *spec.attribute_columns]
            return table_to_dataset(
                cols, rows, name=key, split=split, source=source, text_column="text", label_column="label",
                attribute_columns=spec.attribute_columns, label_names=spec.label_names,
            )  # fmt: skip
    except hub.HubUnavailable as e:
        raise _hub_error(key, str(e), via_auto, spec.folder) from None
    raise AssertionError(key)


_WIKITEXT_NAMES = {"wikitext2", "wikitext_2", "wikitext"}
_WIKITEXT_SPLITS = {"dir": ("valid", "test"), "hub": ("train", "valid", "test")}


def load_public_text(
    name: str = "wikitext2",
    split: str = "valid",
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    limit: int | None = None,
    min_words: int = 5,
    seed: int = 0,
) -> list[str]:
    """Clean sentences of public auxiliary text (WikiText-2) for attacks: titles and blank lines dropped,
    ``@-@``-style splits undone, sentences with ``<unk>`` or fewer than ``min_words`` words dropped.
    ``limit`` keeps a ``seed``-ed random subset (in text order). Local splits: valid, test.
    ``source="auto"`` reads the data folder when set, else the Hub, else (offline, or the Hub unreachable) the
    1,300-sentence-per-split sample embedded in the package (:func:`public_text_origin` says which)."""
    if str(name).strip().lower().replace("-", "_") not in _WIKITEXT_NAMES:
        raise ValueError(f"unknown public text {name!r}; available: ['wikitext2']")
    _check_source(source)
    root, origin = _root(data_dir)
    if source == "auto" and root is None:
        source = "embedded" if hub.offline_requested() else "hub-or-embedded"
    use_dir = source == "dir" or (source == "auto" and root is not None)
    aliases = {"validation": "valid", "dev": "valid", "val": "valid"}
    split = _check_split("wikitext2", split, _WIKITEXT_SPLITS["hub" if source.startswith("hub") else "dir"], aliases)
    if use_dir:
        if root is None:
            raise DatasetNotFoundError(f"source='dir' needs data_dir=... or ${ENV_VAR} to be set")
        lines = _wikitext_file(root / "wikitext2" / f"{split}.txt", f"data folder {root} from {origin}", split)
    elif source == "embedded":
        lines = _wikitext_file(EMBEDDED_DIR / "wikitext2_sample" / f"{split}.txt", "the embedded sample", split)
    else:
        try:
            lines, _ = hub.wikitext_lines_from_hub(split)
        except hub.HubUnavailable as e:
            if source == "hub-or-embedded" and split in _WIKITEXT_SPLITS["dir"]:
                _HUB_FELL_BACK.add(split)
                return load_public_text(name, split, source="embedded", limit=limit, min_words=min_words, seed=seed)
            raise _hub_error("wikitext2", str(e), source != "hub", "wikitext2") from None
    sentences = wikitext_sentences(lines, min_words=min_words)
    return [sentences[i] for i in sample_indices(len(sentences), limit, seed)]


def _wikitext_file(path: Path, where: str, split: str) -> list[str]:
    if not path.is_file():
        raise DatasetNotFoundError(f"public text 'wikitext2' split {split!r}: expected the file {path} ({where})")
    return path.read_text(encoding="utf-8").splitlines()


def public_text_origin(data_dir: str | os.PathLike | None = None) -> str:
    """Where ``load_public_text(source="auto")`` reads WikiText-2: ``"folder <path>"``, ``"hub"``, or
    ``"embedded sample"`` (no data folder and the Hub offline; a reachable-looking Hub that fails falls back to
    the sample too)."""
    root, _ = _root(data_dir)
    if root is not None:
        return f"folder {root}"
    if hub.offline_requested():
        return "embedded sample"
    return "embedded sample (the Hub was unreachable)" if _HUB_FELL_BACK else "hub"


_HUB_FELL_BACK: set[str] = set()  # WikiText-2 splits this process read from the sample because the Hub failed


PUBLIC_SPLITS = ("valid", "test")


def public_corpus(splits: tuple[str, ...] = PUBLIC_SPLITS) -> list[str]:
    """The vendor's public text: every clean WikiText-2 sentence of ``splits`` (the attacks' auxiliary data, the
    MAP prior of vendor-side denoising, the noise-adapted top's training text)."""
    return [s for split in splits for s in load_public_text("wikitext2", split)]


def public_in_domain(dataset: str) -> list[str]:
    """The texts of ``dataset``'s *test* split: public, in-domain and disjoint from the train and dev splits a
    customer trains and is evaluated on (SST-2's GLUE test sentences); ``[]`` when the dataset has no test split."""
    try:
        return list(load_dataset(dataset, "test").texts)
    except (ValueError, DatasetNotFoundError):
        return []
