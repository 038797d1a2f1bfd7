"""A privacy audit the customer runs on its own file, on its own machine, before anything leaves it.

:func:`run_audit` runs the vendor's registered attacks that apply to the setting against the customer's texts and
returns ``audit.json``'s content (at least ``empirical_privacy``, ``strongest_attack``, ``floor`` and ``attacks``:
attack name → success); :func:`write_audit` also renders ``report.html`` (self-contained, plots embedded) and
``report.md`` into one folder and writes nothing elsewhere. Command line: ``splitpriv audit``.
"""

from __future__ import annotations

import json
from pathlib import Path

from splitpriv.audit.run import AuditConfig, load_customer_file, run_audit

__all__ = ["AuditConfig", "load_customer_file", "run_audit", "write_audit"]

FILES = ("audit.json", "report.html", "report.md", "recovery.png", "curve.png")


def write_audit(config: AuditConfig, out, loaded=None) -> dict:
    """Run the audit and write ``out/audit.json``, ``out/report.html``, ``out/report.md`` (and the Markdown's two
    PNGs); ``out`` is created only once the audit has run, so bad input leaves nothing behind."""
    from splitpriv.audit.report import plots, render_html, render_markdown

    audit = run_audit(config, loaded)
    images = plots(audit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(audit, indent=1), encoding="utf-8")
    (out / "report.html").write_text(render_html(audit, images), encoding="utf-8")
    names = {key: f"{key}.png" for key in images}
    for key, png in images.items():
        (out / names[key]).write_bytes(png)
    (out / "report.md").write_text(render_markdown(audit, names), encoding="utf-8")
    return audit
