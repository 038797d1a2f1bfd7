"""``splitpriv --version`` and ``splitpriv datasets``: what is installed and what data it can read right now."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from splitpriv import __version__
from splitpriv.cli import app


def test_version_names_the_package_and_its_stack():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert re.match(rf"splitpriv {re.escape(__version__)}( \(git [0-9a-f]{{12}}\))?; torch \S+, transformers \S+",
                    result.output)


def test_datasets_lists_what_works_offline(monkeypatch):
    monkeypatch.delenv("SPLITPRIV_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["datasets"])
    assert result.exit_code == 0, result.output
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in result.output.strip().splitlines())
    assert rows["sst2-sample"] == "embedded"
    assert rows["sst2"].startswith("not available offline: needs SPLITPRIV_DATA_DIR")
    assert rows["public text"] == "WikiText-2 from the embedded sample"


def test_train_offline_on_a_missing_dataset_names_the_usable_ones(monkeypatch, tmp_path):
    import datasets  # noqa: F401  (imported before the offline variables, which it reads at import time)

    monkeypatch.delenv("SPLITPRIV_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = CliRunner().invoke(app, ["train", "--dataset", "financial_phrasebank", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "available offline here: sst2-sample" in result.output and "Traceback" not in result.output
