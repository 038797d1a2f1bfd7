"""Tests of splitpriv.data on the real shared data files, the embedded sample and small user files."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from splitpriv.data import (
    DatasetNotFoundError,
    TextDataset,
    available_datasets,
    data_dir,
    load_dataset,
    load_file,
    load_public_text,
)
from splitpriv.data import hub
from splitpriv.data.loaders import EMBEDDED_DIR
from splitpriv.data.text import wikitext_sentences

REPO = Path(__file__).resolve().parents[2]
_CANDIDATES = [os.environ.get("SPLITPRIV_DATA_DIR"), "/work/shared/data", str(REPO.parent / "shared" / "data")]
SHARED = next((Path(p) for p in _CANDIDATES if p and (Path(p) / "sst2").is_dir()), None)


@pytest.fixture
def shared(monkeypatch) -> Path:
    if SHARED is None:
        pytest.skip(f"no shared data folder (looked for $SPLITPRIV_DATA_DIR, {_CANDIDATES[1:]})")
    monkeypatch.setenv("SPLITPRIV_DATA_DIR", str(SHARED))
    return SHARED


@pytest.fixture
def no_data_dir(monkeypatch):
    monkeypatch.delenv("SPLITPRIV_DATA_DIR", raising=False)


@pytest.fixture
def hf_offline(monkeypatch, no_data_dir, tmp_path):
    # import first: `datasets` / `huggingface_hub` read these variables at import time, and importing them
    # while the variables are set would leave the rest of the test session offline
    import datasets  # noqa: F401

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached copy to fall back on


# ------------------------------------------------------------------ named datasets from the shared folder

COUNTS = [
    ("sst2", "train", {"negative": 29780, "positive": 37569}),
    ("sst2", "dev", {"negative": 428, "positive": 444}),
    ("financial_phrasebank", "train", {"negative": 483, "neutral": 2304, "positive": 1091}),
    ("financial_phrasebank", "dev", {"negative": 60, "neutral": 288, "positive": 136}),
    ("financial_phrasebank", "test", {"negative": 61, "neutral": 287, "positive": 136}),
    ("blog_authorship", "train", dict(zip(hub.BLOG_INDUSTRIES, [2664, 1666, 553, 3224, 1139, 751, 1556, 736, 1201, 3369]))),
    ("blog_authorship", "dev", dict(zip(hub.BLOG_INDUSTRIES, [339, 213, 50, 323, 156, 75, 197, 68, 149, 394]))),
    ("blog_authorship", "test", dict(zip(hub.BLOG_INDUSTRIES, [306, 217, 86, 412, 163, 104, 188, 99, 175, 297]))),
]  # fmt: skip


def test_available_datasets():
    assert available_datasets() == ["sst2", "sst2-sample", "financial_phrasebank", "blog_authorship", "trustpilot"]


@pytest.mark.parametrize("name,split,counts", COUNTS, ids=[f"{n}-{s}" for n, s, _ in COUNTS])
def test_rows_and_label_distribution(shared, name, split, counts):
    ds = load_dataset(name, split)
    assert isinstance(ds, TextDataset)
    assert (ds.name, ds.split) == (name, split)
    assert len(ds) == sum(counts.values()) == len(ds.labels)
    assert ds.label_names == tuple(counts)  # stable id order
    assert ds.num_labels == len(counts)
    assert ds.label_counts() == counts
    assert ds.source == str(shared / name / f"{split}.tsv")


def test_label_names():
    assert load_dataset("sst2-sample", "dev").label_names == ("negative", "positive")


def test_sst2_test_is_unlabelled(shared):
    ds = load_dataset("sst2", "test")
    assert len(ds) == 1821 and ds.labels is None and ds.label_counts() == {}
    assert ds.label_names == ("negative", "positive")
    assert ds.texts[0].startswith("uneasy mishmash")


@pytest.mark.parametrize(
    "name,split", [(n, s) for n, s, _ in COUNTS] + [("sst2", "test"), ("trustpilot", "train"), ("trustpilot", "test")]
)
def test_texts_clean(shared, name, split):
    ds = load_dataset(name, split)
    assert all(t and t == t.strip() for t in ds.texts)
    assert not any("\t" in t or "\n" in t for t in ds.texts)


def test_blog_attributes(shared):
    ds = load_dataset("blog_authorship", "train")
    assert set(ds.attributes) == {"gender", "age", "age_group"}
    assert Counter(ds.attributes["gender"]) == {"male": 10068, "female": 6791}
    assert Counter(ds.attributes["age_group"]) == {"10s": 2842, "20s": 10277, "30s": 3740}
    ages = {int(a) for a in ds.attributes["age"]}
    assert min(ages) >= 13 and max(ages) <= 48
    assert all(hub.age_group(int(a)) == g for a, g in zip(ds.attributes["age"], ds.attributes["age_group"]))
    test = load_dataset("blog_authorship", "test")
    assert Counter(test.attributes["gender"]) == {"male": 1180, "female": 867}


@pytest.mark.parametrize(
    "split,n,gender,groups",
    [("train", 4996, {"M": 2495, "F": 2501}, [807, 2413, 795, 981]), ("test", 403, {"M": 201, "F": 202}, [65, 194, 65, 79])],
)
def test_trustpilot(shared, split, n, gender, groups):
    ds = load_dataset("trustpilot", split)
    assert len(ds) == n
    assert ds.labels is None and ds.label_names == () and ds.num_labels == 0
    assert set(ds.attributes) == {"gender", "age", "age_group"}
    assert Counter(ds.attributes["gender"]) == gender
    assert Counter(ds.attributes["age_group"]) == dict(zip(["15-24", "25-54", "55-64", "65+"], groups))


@pytest.mark.parametrize(
    "agreement,sizes",
    [(50, (3878, 484, 484)), (66, (3367, 419, 431)), ("75", (2761, 341, 351)), (100, (1798, 223, 243)), ("all", (1798, 223, 243))],
)
def test_fpb_agreement(shared, agreement, sizes):
    got = tuple(len(load_dataset("financial_phrasebank", s, agreement=agreement)) for s in ("train", "dev", "test"))
    assert got == sizes
    assert load_dataset("financial_phrasebank", "dev", agreement=agreement).attributes == {}


def test_split_aliases_and_data_dir_argument(shared, monkeypatch):
    assert data_dir() == shared
    monkeypatch.delenv("SPLITPRIV_DATA_DIR")
    assert data_dir() is None
    ds = load_dataset("SST-2", "validation", data_dir=shared)
    assert ds.split == "dev" and len(ds) == 872
    assert len(load_dataset("fpb", "val", data_dir=shared, source="dir")) == 484


def test_limit_and_seed(shared):
    full = load_dataset("sst2", "dev")
    a = load_dataset("sst2", "dev", limit=100, seed=3)
    assert len(a) == 100
    assert a.texts == load_dataset("sst2", "dev", limit=100, seed=3).texts  # deterministic
    assert a.texts != load_dataset("sst2", "dev", limit=100, seed=4).texts
    index = {t: i for i, t in enumerate(full.texts)}
    positions = [index[t] for t in a.texts]
    assert positions == sorted(positions)  # a subset, in file order
    assert [full.labels[i] for i in positions] == a.labels
    assert load_dataset("sst2", "dev", limit=5000).texts == full.texts
    tp = load_dataset("trustpilot", "test", limit=10, seed=1)
    assert len(tp) == 10 and all(len(v) == 10 for v in tp.attributes.values())


def test_dataset_helpers(shared):
    ds = load_dataset("blog_authorship", "dev")
    head = ds.head(5)
    assert head.texts == ds.texts[:5] and head.labels == ds.labels[:5]
    assert head.attributes["gender"] == ds.attributes["gender"][:5] and head.source == ds.source
    sub = ds.subset([3, 1])
    assert sub.texts == [ds.texts[3], ds.texts[1]] and sub.attributes["age"] == [ds.attributes["age"][3], ds.attributes["age"][1]]
    sh = ds.shuffled(seed=1)
    assert len(sh) == len(ds) and sorted(sh.texts) == sorted(ds.texts) and sh.texts != ds.texts
    assert sh.texts == ds.shuffled(seed=1).texts
    assert ds.sample(7, seed=2).texts == load_dataset("blog_authorship", "dev", limit=7, seed=2).texts
    assert len(ds.sample(7, seed=2)) == 7 and len(ds.head(10**9)) == len(ds)
    with pytest.raises(IndexError):
        ds.subset([len(ds)])


def test_textdataset_validation():
    with pytest.raises(ValueError, match="labels"):
        TextDataset("x", "train", ["a", "b"], [0], ("n", "p"), {}, "test")
    with pytest.raises(ValueError, match="out of range"):
        TextDataset("x", "train", ["a"], [2], ("n", "p"), {}, "test")
    with pytest.raises(ValueError, match="gender"):
        TextDataset("x", "train", ["a"], None, (), {"gender": []}, "test")


# ------------------------------------------------------------------ public text

def test_wikitext_sentences_clean(shared):
    for split, lo in (("valid", 2000), ("test", 2000)):
        sents = load_public_text("wikitext2", split)
        assert len(sents) > lo
        for s in sents:
            assert "<unk>" not in s and "@" not in s, s
            assert not (s.startswith("=") and s.endswith("=")), s
            assert s == s.strip() and len(s.split()) >= 5
    text = " ".join(sents)
    assert "1,000" in text or "000" in text
    assert any("-" in s for s in sents)
    few = load_public_text(split="valid", limit=20, seed=1)
    assert len(few) == 20 and few == load_public_text(split="validation", limit=20, seed=1)
    assert all(len(s.split()) >= 12 for s in load_public_text(min_words=12))


def test_wikitext_sentences_rules():
    lines = [
        " ",
        " = Title = ",
        " = = Section = = ",
        " It grew to 1 @,@ 000 @-@ year old trees of 2 @.@ 5 m . A short one . The <unk> was here today indeed . ",
        " Is this a real question from the text ? Yes it is one , he said ! ",
    ]
    assert wikitext_sentences(lines, min_words=5) == [
        "It grew to 1,000-year old trees of 2.5 m .",
        "Is this a real question from the text ?",
        "Yes it is one , he said !",
    ]


# ------------------------------------------------------------------ embedded sample

def test_embedded_sample_without_data_dir(no_data_dir):
    assert data_dir() is None
    train, dev = load_dataset("sst2-sample", "train"), load_dataset("sst2-sample", "dev")
    assert (len(train), len(dev)) == (4000, 872)
    assert train.label_counts() == {"negative": 1839, "positive": 2161}
    assert dev.label_counts() == {"negative": 428, "positive": 444}
    assert train.source == dev.source == "embedded:sst2_sample"
    assert all(len(t.split()) >= 4 and t == t.strip() for t in train.texts)
    assert len(set(train.texts)) == 4000
    assert load_dataset("sst2", "dev", source="embedded").texts == dev.texts
    with pytest.raises(ValueError, match="no split 'test'"):
        load_dataset("sst2-sample", "test")


def test_embedded_sample_files():
    folder = EMBEDDED_DIR / "sst2_sample"
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert set(sizes) == {"train.tsv", "dev.tsv", "SOURCE.md"}
    assert sum(sizes.values()) < 1_000_000
    source_md = (folder / "SOURCE.md").read_text()
    for needle in ("Socher", "GLUE", "random.Random(0)", "at least 4", "SPLITPRIV_DATA_DIR", "make_embedded_sst2.py"):
        assert needle in source_md
    assert (folder / "train.tsv").read_text().splitlines()[0] == "sentence\tlabel"


def test_embedded_sample_is_reproducible(shared):
    spec = importlib.util.spec_from_file_location("make_embedded_sst2", REPO / "scripts" / "make_embedded_sst2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = mod.build(shared)
    for name, text in files.items():
        assert (EMBEDDED_DIR / "sst2_sample" / name).read_text(encoding="utf-8") == text, name
    full_dev = load_dataset("sst2", "dev")
    assert load_dataset("sst2-sample", "dev").texts == full_dev.texts


def test_embedded_public_text_offline(hf_offline):
    """No data folder and the Hub offline: the attacker's public text is the WikiText-2 sample in the package."""
    from splitpriv.data import dataset_availability, public_corpus, public_text_origin

    valid, test = load_public_text("wikitext2", "valid"), load_public_text("wikitext2", "test")
    assert len(valid) == len(test) == 1300 and not set(valid) & set(test)
    assert all(len(s.split()) >= 5 and "<unk>" not in s for s in valid + test)
    assert load_public_text("wikitext2", "valid", source="embedded") == valid
    assert public_corpus() == valid + test and public_text_origin() == "embedded sample"
    availability = dataset_availability()
    assert availability["sst2-sample"] == "embedded"
    assert all(where.startswith("not available offline") for n, where in availability.items() if n != "sst2-sample")
    with pytest.raises(DatasetNotFoundError, match=r"available offline here: sst2-sample \(`splitpriv datasets`"):
        load_dataset("sst2", "train")


def test_embedded_public_text_files_and_rebuild(shared):
    folder = EMBEDDED_DIR / "wikitext2_sample"
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert set(sizes) == {"valid.txt", "test.txt", "SOURCE.md"} and sum(sizes.values()) < 400_000
    source_md = (folder / "SOURCE.md").read_text()
    for needle in ("Merity", "CC BY-SA", "limit=1300, seed=0", "make_embedded_wikitext2.py"):
        assert needle in source_md
    spec = importlib.util.spec_from_file_location("make_wt2", REPO / "scripts" / "make_embedded_wikitext2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, text in mod.build(shared).items():
        assert (folder / name).read_text(encoding="utf-8") == text, name
    from splitpriv.data import public_text_origin

    assert public_text_origin() == f"folder {shared}" and len(load_public_text("wikitext2", "valid")) == 2550


# ------------------------------------------------------------------ user files

def test_load_csv_with_quoting(tmp_path):
    p = tmp_path / "reviews.csv"
    p.write_text('review,stars,sex\n"Great, really ""great"" service",5,F\nbad,1,M\n"two\nlines",3,F\n', encoding="utf-8")
    ds = load_file(p, text_column="review", label_column="stars", attribute_columns=["sex"])
    assert ds.texts == ['Great, really "great" service', "bad", "two\nlines"]
    assert ds.label_names == ("1", "3", "5") and ds.labels == [2, 0, 1]
    assert ds.attributes == {"sex": ["F", "M", "F"]}
    assert (ds.name, ds.split, ds.source) == ("reviews", "file", str(p))


def test_load_tsv_without_quoting(tmp_path):
    p = tmp_path / "data.tsv"
    p.write_text('text\tlabel\tage\n"quoted" start \tpos\t30\nit \'s bad\tneg\t41\n', encoding="utf-8")
    ds = load_file(p, attribute_columns=("age",), label_names=["neg", "pos"])
    assert ds.texts == ['"quoted" start', "it 's bad"]
    assert ds.labels == [1, 0] and ds.label_names == ("neg", "pos")
    assert ds.attributes == {"age": ["30", "41"]}
    assert load_file(p, label_column=None).labels is None


def test_load_jsonl(tmp_path):
    p = tmp_path / "data.jsonl"
    rows = [{"body": f"text {i}", "y": i % 3, "g": "f" if i % 2 else "m"} for i in range(12)]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    ds = load_file(p, text_column="body", label_column="y", attribute_columns=["g"])
    assert len(ds) == 12 and ds.label_names == ("0", "1", "2") and ds.labels == [i % 3 for i in range(12)]
    assert ds.attributes["g"][:2] == ["m", "f"]
    few = load_file(p, text_column="body", label_column="y", limit=5, seed=7)
    assert len(few) == 5 and few.label_names == ("0", "1", "2")
    assert few.texts == load_file(p, text_column="body", label_column="y", limit=5, seed=7).texts
    named = load_file(p, text_column="body", label_column="y", label_names=["neg", "neu", "pos"])
    assert named.labels == ds.labels  # integer ids within range are accepted


def test_numeric_labels_sort_numerically(tmp_path):
    p = tmp_path / "n.tsv"
    p.write_text("text\tlabel\n" + "".join(f"t{i}\t{v}\n" for i, v in enumerate([10, 2, 1, 2])), encoding="utf-8")
    ds = load_file(p)
    assert ds.label_names == ("1", "2", "10") and ds.labels == [2, 1, 0, 1]


# ------------------------------------------------------------------ errors

def test_bad_names_splits_options(shared):
    with pytest.raises(ValueError, match=r"unknown dataset 'imdb'.*sst2"):
        load_dataset("imdb")
    with pytest.raises(ValueError, match=r"no split 'dev'.*\['train', 'test'\]"):
        load_dataset("trustpilot", "dev")
    with pytest.raises(ValueError, match="unknown source"):
        load_dataset("sst2", source="web")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['agreement'\]"):
        load_dataset("sst2", agreement=66)
    with pytest.raises(ValueError, match="agreement must be one of"):
        load_dataset("financial_phrasebank", agreement=80)
    with pytest.raises(ValueError, match="limit must be"):
        load_dataset("sst2", "dev", limit=0)
    with pytest.raises(DatasetNotFoundError, match="only SST-2 has an embedded sample"):
        load_dataset("financial_phrasebank", source="embedded")
    with pytest.raises(ValueError, match="no split 'train'"):
        load_public_text("wikitext2", "train")
    with pytest.raises(ValueError, match="unknown public text"):
        load_public_text("bookcorpus")


def test_missing_folder_or_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITPRIV_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DatasetNotFoundError, match="nope.*does not exist"):
        load_dataset("sst2")
    monkeypatch.setenv("SPLITPRIV_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=f"expected the folder {tmp_path / 'sst2'}"):
        load_dataset("sst2")
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\nok\t1\n")
    assert len(load_dataset("sst2")) == 1
    with pytest.raises(DatasetNotFoundError, match=f"expected the file {tmp_path / 'sst2' / 'dev.tsv'}"):
        load_dataset("sst2", "dev")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "wikitext2" / "valid.txt")):
        load_public_text()
    monkeypatch.delenv("SPLITPRIV_DATA_DIR")
    with pytest.raises(DatasetNotFoundError, match="source='dir' needs"):
        load_dataset("sst2", source="dir")


def test_bad_rows_in_named_dataset(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\nok\t7\n")
    with pytest.raises(ValueError, match=r"label '7'.*not in label_names \('negative', 'positive'\)"):
        load_dataset("sst2", data_dir=tmp_path)
    (tmp_path / "sst2" / "train.tsv").write_text("text\tlabel\nok\t1\n")
    with pytest.raises(ValueError, match=r"\['sentence'\] not found; columns found: \['text', 'label'\]"):
        load_dataset("sst2", data_dir=tmp_path)


def test_user_file_errors(tmp_path):
    good = tmp_path / "a.csv"
    good.write_text("text,label\nhello,x\n")
    with pytest.raises(ValueError, match=r"\['body'\] not found; columns found: \['text', 'label'\]"):
        load_file(good, text_column="body")
    with pytest.raises(ValueError, match=r"\['sex'\] not found"):
        load_file(good, attribute_columns=["sex"])
    with pytest.raises(ValueError, match=r"\['y'\] not found"):
        load_file(good, label_column="y")
    with pytest.raises(ValueError, match="label 'x', which is not in label_names"):
        load_file(good, label_names=["a", "b"])
    for name, content in (("e.csv", ""), ("e.tsv", "text\tlabel\n"), ("e.jsonl", "\n\n")):
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match="empty file"):
            load_file(tmp_path / name)
    (tmp_path / "nolabel.tsv").write_text("text\tlabel\nfine\tpos\nalso fine\t\n")
    with pytest.raises(ValueError, match="row 2 has an empty label"):
        load_file(tmp_path / "nolabel.tsv")
    (tmp_path / "notext.tsv").write_text("text\tlabel\n \tpos\n")
    with pytest.raises(ValueError, match="row 1 has an empty 'text'"):
        load_file(tmp_path / "notext.tsv")
    (tmp_path / "fields.tsv").write_text("text\tlabel\na\tb\tc\n")
    with pytest.raises(ValueError, match="line 2 has 3 fields"):
        load_file(tmp_path / "fields.tsv")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2 is a JSON list"):
        load_file(tmp_path / "bad.jsonl", label_column=None)
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="unsupported file extension"):
        load_file(tmp_path / "x.parquet")
    with pytest.raises(DatasetNotFoundError, match="file not found"):
        load_file(tmp_path / "missing.csv")


# ------------------------------------------------------------------ Hugging Face Hub (offline here)

def test_hub_offline_fails_fast_with_clear_error(hf_offline):
    t0 = time.monotonic()
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset("sst2")
    assert time.monotonic() - t0 < 30
    msg = str(exc.value)
    assert "SPLITPRIV_DATA_DIR is not set" in msg and "'sst2'" in msg and "sst2-sample" in msg
    assert isinstance(exc.value, LookupError)
    with pytest.raises(DatasetNotFoundError, match="The Hugging Face Hub could not be reached for 'wikitext2'"):
        load_public_text(source="hub")
    assert len(load_public_text()) == 1300  # source="auto" falls back to the embedded sample
    with pytest.raises(DatasetNotFoundError, match="The Hugging Face Hub could not be reached for 'financial_phrasebank'"):
        load_dataset("financial_phrasebank", source="hub", data_dir="/nonexistent")
    assert time.monotonic() - t0 < 60


def test_unreachable_hub_fails_fast(no_data_dir, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", *hub._PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(DatasetNotFoundError, match=r"could not be reached for 'blog_authorship' \(cannot connect to 127.0.0.1:9"):
        load_dataset("blog_authorship", "dev")
    assert load_public_text("wikitext2", "test") == load_public_text("wikitext2", "test", source="embedded")
    from splitpriv.data import public_text_origin

    assert public_text_origin() == "embedded sample (the Hub was unreachable)"
    assert time.monotonic() - t0 < 30


def test_trustpilot_is_local_only(no_data_dir):
    with pytest.raises(DatasetNotFoundError, match="only available from a local folder.*SPLITPRIV_DATA_DIR"):
        load_dataset("trustpilot")


def test_fpb_hub_split_reproduces_local_split(shared):
    """The split recomputed for the Hub copy equals the shipped split (same rule, same seed)."""
    rows = []
    for line in (shared / "financial_phrasebank" / "raw" / "Sentences_50Agree.txt").read_text("utf-8").splitlines():
        text, label = line.rsplit("@", 1)
        rows.append((hub.normalise_ws(text), label.strip()))
    assign = hub.fpb_split_assignment(rows)
    for split in ("train", "dev", "test"):
        ds = load_dataset("financial_phrasebank", split)
        assert [(t, y) for t, y in rows if assign[t] == split] == [
            (t, ds.label_names[y]) for t, y in zip(ds.texts, ds.labels)
        ]


def test_blog_hub_reduction_rules():
    words = lambda n, tag: " ".join([tag] * n)  # noqa: E731
    cols = {"text": [], "gender": [], "age": [], "job": [], "horoscope": []}

    def add(n_posts, gender, age, job, n_words=12, tag="w"):
        for i in range(n_posts):
            for k, v in zip(cols, (words(n_words, f"{tag}{i}"), gender, age, job, "Aries")):
                cols[k].append(v)

    add(12, "male", 15, "Arts", tag="a")  # capped to 10
    add(3, "male", 15, "Arts", n_words=5)  # too short... but same key: still the same blogger
    add(4, "female", 25, "Student")  # not one of the 10 industries
    add(2, "female", 35, "Law", n_words=101)  # too long
    add(3, "female", 35, "Law", tag="l")
    rows = hub.blog_rows_from_hub("train", cols)["train"]
    assert len(rows) == 13
    assert Counter(r["label"] for r in rows) == {"Arts": 10, "Law": 3}
    assert {r["age_group"] for r in rows} == {"10s", "30s"} and all(r["age"] in {"15", "35"} for r in rows)
    val = hub.blog_rows_from_hub("validation", cols)
    assert set(val) == {"dev", "test"} and sorted(len(v) for v in val.values()) == [3, 10]
    assert hub.clean_blog_text("caf\u00c3\u00a9 &amp;  ok&nbsp;x\x00 ") == "café & ok x"  # UTF-8 read as latin-1
    assert hub.clean_blog_text("\x93quoted\x94") == "\u201cquoted\u201d"  # Windows-1252 read as latin-1
