"""A vendor that warms up has its model in memory before the first open: the open loads nothing."""

from __future__ import annotations

import pytest

from splitpriv.contract import SessionConfig
from splitpriv.models import SEQUENCE_CLASSIFICATION
from splitpriv.roles.vendor import Vendor
from splitpriv.roles.vendor import vendor as vendor_module
from splitpriv.roles.vendor.warmup import default_task, warm_up


def test_after_warm_up_an_open_loads_no_model(monkeypatch, tmp_path):
    vendor = Vendor(state_dir=tmp_path)
    assert default_task(vendor) == SEQUENCE_CLASSIFICATION
    assert warm_up(vendor) == SEQUENCE_CLASSIFICATION and (SEQUENCE_CLASSIFICATION, 2) in vendor._bases

    def no_load(*args, **kwargs):
        raise AssertionError("the open loaded the model again")

    monkeypatch.setattr(vendor_module, "load_model", no_load)
    info = vendor.open_session(SessionConfig(n_bottom_layers=1, total_steps=2, seed=0))
    assert vendor.session(info.session_id, info.token).session_id == info.session_id
    with pytest.raises(AssertionError, match="loaded the model again"):
        vendor.open_session(SessionConfig(n_bottom_layers=1, total_steps=2, seed=0, num_labels=3))
