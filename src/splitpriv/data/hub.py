"""Loading the same datasets from the Hugging Face Hub (used when no local data folder is configured).

The Hub copies are converted to the layout of the local folders (see each folder's ``SOURCE.md``):

* sst2: ``nyu-mll/glue`` (formerly ``glue``) config ``sst2``; ``validation`` is our ``dev``; test labels
  are hidden (``-1``), so the test split has ``labels=None``.
* financial_phrasebank: ``takala/financial_phrasebank`` has no split. The split of the local folder is
  recomputed (:func:`fpb_split_assignment`): group rows by text, stratify by label, ``random.Random(0)``,
  80/10/10 per label. Agreement ``X`` uses the ``sentences_Xagree`` config, whose rows follow the
  ``sentences_50agree`` split by text (the sets are nested).
* blog_authorship: ``barilan/blog_authorship_corpus`` (one row per post line, no author id, splits
  ``train`` / ``validation`` that are author-disjoint). Rows are reduced as for the local folder
  (:func:`blog_rows_from_hub`): the same 10 industries, posts of 10-100 words, at most 10 posts per
  blogger; ``validation`` bloggers are split half/half into ``dev`` and ``test``. Bloggers are
  recognised as runs of consecutive rows with the same (gender, age, industry, sign), so the result is
  close to, not identical with, the local files.
* wikitext2: ``Salesforce/wikitext`` (formerly ``wikitext``) config ``wikitext-2-v1``.

Script-based Hub datasets (financial_phrasebank, blog_authorship) no longer load with ``datasets>=4``;
their Parquet conversion (revision ``refs/convert/parquet``) is tried next.
"""

from __future__ import annotations

import html
import os
import random
import re
import socket
import sys
import threading
from collections.abc import Sequence
from urllib.parse import urlparse

HUB_IDS = {
    "sst2": ("nyu-mll/glue", "sst2"),
    "financial_phrasebank": ("takala/financial_phrasebank", "sentences_50agree"),
    "blog_authorship": ("barilan/blog_authorship_corpus", "blog_authorship_corpus"),
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-v1"),
}
FPB_CONFIGS = {50: "sentences_50agree", 66: "sentences_66agree", 75: "sentences_75agree", 100: "sentences_allagree"}
FPB_LABELS = ("negative", "neutral", "positive")
BLOG_INDUSTRIES = (
    "Arts", "Communications-Media", "Consulting", "Education", "Engineering",
    "Government", "Internet", "Law", "Non-Profit", "Technology",
)  # fmt: skip

_TRUE = {"1", "ON", "YES", "TRUE"}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


class HubUnavailable(Exception):
    """The Hub copy could not be loaded; ``str(exc)`` says why."""


def offline_requested() -> bool:
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in _OFFLINE_VARS)


def _probe(endpoint: str, timeout: float = 4.0) -> str | None:
    """``None`` if a TCP connection to the Hub endpoint opens within ``timeout`` s, else the reason."""
    u = urlparse(endpoint)
    host, port = u.hostname or "huggingface.co", u.port or (80 if u.scheme == "http" else 443)
    result: list[str | None] = [f"no answer from {host}:{port} within {timeout:.0f} s"]

    def run() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = None
        except OSError as e:
            result[0] = f"cannot connect to {host}:{port}: {e}"

    t = threading.Thread(target=run, daemon=True)  # bounds DNS resolution too
    t.start()
    t.join(timeout + 1.0)
    return result[0]


def _short(e: BaseException, n: int = 300) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:n]}{'...' if len(msg) > n else ''}"


def fetch(repo: str, config: str | None, *, parquet_fallback: bool = False):
    """``datasets.load_dataset(repo, config)`` (a ``DatasetDict``), failing fast when the Hub is unreachable.

    With ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set, only the local ``datasets`` cache is used (and not
    even that if ``datasets`` was imported before the variable was set, since it reads them at import).
    """
    if offline_requested():
        ds_mod = sys.modules.get("datasets")
        if ds_mod is not None and not ds_mod.config.HF_HUB_OFFLINE:
            raise HubUnavailable("offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), so the Hub was not tried")
    elif not any(os.environ.get(v) for v in _PROXY_VARS):
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        reason = _probe(endpoint)
        if reason:
            raise HubUnavailable(reason)
    try:
        import datasets
    except ImportError as e:
        raise HubUnavailable(f"the 'datasets' library is not installed ({e})") from None

    attempts = [(f"{repo} [{config}]", dict(path=repo, name=config))]
    if parquet_fallback:
        kw = dict(path=repo, revision="refs/convert/parquet")
        if config:
            kw["data_dir"] = config
        attempts.append((f"{repo} [{config}] at revision refs/convert/parquet", kw))
    errors = []
    for desc, kw in attempts:
        try:
            return datasets.load_dataset(**kw)
        except Exception as e:  # noqa: BLE001 - any failure is reported in one clear error
            errors.append(f"{desc}: {_short(e)}")
            if not offline_requested() and "couldn't reach" in str(e).lower():
                break  # the Hub is down: the next attempt would only wait again
    raise HubUnavailable("; ".join(errors))


def _label_names_of(ds, column: str = "label"):
    feat = ds.features.get(column)
    return list(feat.names) if hasattr(feat, "names") else None


# ---------------------------------------------------------------- financial_phrasebank


def normalise_ws(text: str) -> str:
    return " ".join(text.split())


def fpb_split_assignment(rows: Sequence[tuple[str, str]], seed: int = 0) -> dict[str, str]:
    """``{text: split}`` for Financial PhraseBank rows ``(text, label)`` of the 50Agree set, in file order.

    Texts are grouped, stratified by the label of their first occurrence, and per label (in the order
    negative, neutral, positive) sorted, shuffled with one ``random.Random(seed)`` and cut 80/10/10.
    """
    first: dict[str, str] = {}
    for text, label in rows:
        first.setdefault(text, label)
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for label in FPB_LABELS:
        texts = sorted(t for t, lab in first.items() if lab == label)
        rng.shuffle(texts)
        n_train, n_dev = round(0.8 * len(texts)), round(0.1 * len(texts))
        for i, t in enumerate(texts):
            out[t] = "train" if i < n_train else "dev" if i < n_train + n_dev else "test"
    return out


def _fpb_rows(dd) -> list[tuple[str, str]]:
    ds = dd["train"]
    names = _label_names_of(ds) or list(FPB_LABELS)
    labels = [names[y] if isinstance(y, int) else str(y) for y in ds["label"]]
    return [(normalise_ws(t), y) for t, y in zip(ds["sentence"], labels)]


def fpb_from_hub(split: str, agreement: int) -> tuple[list[str], list[str], str]:
    """Texts, string labels and the source id of one split."""
    repo, base_cfg = HUB_IDS["financial_phrasebank"]
    base = _fpb_rows(fetch(repo, base_cfg, parquet_fallback=True))
    assign = fpb_split_assignment(base)
    cfg = FPB_CONFIGS[agreement]
    rows = base if cfg == base_cfg else _fpb_rows(fetch(repo, cfg, parquet_fallback=True))
    kept = [(t, y) for t, y in rows if assign.get(t) == split]
    return [t for t, _ in kept], [y for _, y in kept], f"hub:{repo}/{cfg}"


# ---------------------------------------------------------------- blog_authorship

_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f\u00a0]")


def clean_blog_text(text: str) -> str:
    """Undo the Hub loader's latin-1 decoding, unescape HTML, drop control characters, collapse spaces."""
    try:
        raw = text.encode("latin-1")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1252", errors="replace").replace("\ufffd", " ")
    except UnicodeEncodeError:
        pass
    return " ".join(_CTRL.sub(" ", html.unescape(text)).split())


def age_group(age: int) -> str:
    """The corpus's age bands: ``10s`` (13-17), ``20s`` (23-27), ``30s`` (33 and over)."""
    return "10s" if age < 20 else "20s" if age < 30 else "30s"


def blog_rows_from_hub(
    hub_split: str, columns: dict[str, Sequence], *, max_per_blogger: int = 10, seed: int = 0
) -> dict[str, list[dict[str, str]]]:
    """Reduce one Hub split (columns text, gender, age, job, horoscope) to our rows, keyed by our split.

    A blogger is a run of consecutive rows with the same (gender, age, job, horoscope); an optional
    ``position`` column (row numbers in the Hub split) also ends a run where rows were skipped.
    Hub ``train`` -> ``train``; Hub ``validation`` -> ``dev`` / ``test`` (bloggers shuffled, first half dev).
    """
    industries = set(BLOG_INDUSTRIES)
    bloggers: list[list[dict[str, str]]] = []
    prev, prev_pos = None, None
    positions = columns.get("position") or range(len(columns["text"]))
    for pos, text, gender, age, job, sign in zip(
        positions, columns["text"], columns["gender"], columns["age"], columns["job"], columns["horoscope"]
    ):
        key = (gender, age, job, sign)
        if key != prev or pos != prev_pos + 1:
            bloggers.append([])
        prev, prev_pos = key, pos
        if job not in industries:
            continue
        t = clean_blog_text(text)
        if 10 <= len(t.split()) <= 100:
            a = int(age)
            bloggers[-1].append(
                {"text": t, "label": job, "gender": gender, "age": str(a), "age_group": age_group(a)}
            )
    bloggers = [b for b in bloggers if b]
    rng = random.Random(seed)
    if hub_split == "train":
        groups = {"train": bloggers}
    else:
        order = list(range(len(bloggers)))
        rng.shuffle(order)
        half = round(len(order) / 2)
        groups = {
            "dev": [bloggers[i] for i in sorted(order[:half])],
            "test": [bloggers[i] for i in sorted(order[half:])],
        }
    out = {}
    for split, blogs in groups.items():
        rows = []
        for posts in blogs:
            if len(posts) > max_per_blogger:
                keep = sorted(rng.sample(range(len(posts)), max_per_blogger))
                posts = [posts[i] for i in keep]
            rows.extend(posts)
        out[split] = rows
    return out


def blog_from_hub(split: str) -> tuple[list[dict[str, str]], str]:
    repo, cfg = HUB_IDS["blog_authorship"]
    dd = fetch(repo, cfg, parquet_fallback=True)
    hub_split = "train" if split == "train" else "validation"
    ds = dd[hub_split]
    industries = set(BLOG_INDUSTRIES)
    keep = [i for i, j in enumerate(ds["job"]) if j in industries]
    cols = ds.select(keep).to_dict() if keep else {k: [] for k in ds.column_names}
    cols["position"] = keep
    rows = blog_rows_from_hub(hub_split, cols)[split]
    return rows, f"hub:{repo}"


# ---------------------------------------------------------------- sst2, wikitext


def sst2_from_hub(split: str) -> tuple[list[str], list[int] | None, str]:
    repo, cfg = HUB_IDS["sst2"]
    dd = fetch(repo, cfg)
    ds = dd[{"dev": "validation"}.get(split, split)]
    texts = [t.strip() for t in ds["sentence"]]
    labels = [int(y) for y in ds["label"]]
    return texts, (None if any(y < 0 for y in labels) else labels), f"hub:{repo}/{cfg}"


def wikitext_lines_from_hub(split: str) -> tuple[list[str], str]:
    repo, cfg = HUB_IDS["wikitext2"]
    dd = fetch(repo, cfg)
    ds = dd[{"valid": "validation"}.get(split, split)]
    return list(ds["text"]), f"hub:{repo}/{cfg}"
