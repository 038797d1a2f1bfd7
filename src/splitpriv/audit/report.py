"""The audit as a self-contained HTML page (plots embedded as base64 PNG) and as Markdown.

Everything taken from the customer's file (texts, tokens, column and file names) is escaped with
:func:`html.escape` in the HTML.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from string import Template

PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Privacy audit: $name</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1080px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.verdict{font-size:1.3em;font-weight:600;background:#fff4e5;border-left:6px solid #e8590c;padding:.6em .9em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.muted{color:#666;font-size:.92em} img{max-width:100%}
.sentence{margin:.5em 0 1em;line-height:2.6} .tok{display:inline-block;text-align:center;margin:0 2px;
padding:0 3px;border-radius:3px;vertical-align:top;line-height:1.25}
.tok .g{display:block;font-size:.75em;color:#555} .tok.hit{background:#ffc9c9;color:#900;font-weight:600}
.tok.miss{background:#eef3f8}
</style></head><body>
<h1>Privacy audit of $name</h1>
<p class="muted">$file: $setting</p>
<p class="verdict">$verdict</p>
<h2>What the vendor recovers</h2>
<p>Empirical privacy <b>$privacy</b> (1 − the strongest attack's token recovery; strongest: <b>$strongest</b>).
Prior-only floor (a blind guess from public text and sentence lengths): <b>$floor</b>.</p>
$figures
<p class="muted">$task_words</p>
$recovery_plot
<h2>Every attack</h2>
$attacks
<p class="muted">$attack_options</p>
<h2>Privacy against the noise parameter</h2>
$curve
<h2>Your sentences as the vendor would read them</h2>
<p class="muted">Each token of your text, with the attacker's best guess below it ($sample_attack).
<span class="tok hit">red<span class="g">red</span></span> tokens are recovered: the vendor reads them.</p>
$sample
<h2>Labels</h2>
$labels
<h2>Author attribute</h2>
$attribute
<p class="muted">$footer</p>
</body></html>
""")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def plots(audit: dict) -> dict[str, bytes]:
    """``{"recovery": png, "curve": png}`` (the curve only when it has points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    results = audit["results"]
    keys = [k for k in ("token_recovery", "content_recovery", "task_recovery") if k in audit["figures"]]
    names = list(results)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / max(len(keys), 1)
    for j, key in enumerate(keys):
        values = [results[n].get(key) or 0.0 for n in names]
        ax.bar([i + j * width for i in range(len(names))], [100 * v for v in values], width,
               label=audit["figures"][key]["label"])
    ax.axhline(100 * audit["floor"], color="k", ls="--", lw=1, label="prior-only floor")
    ax.set_xticks([i + width * (len(keys) - 1) / 2 for i in range(len(names))], names)
    ax.set_ylabel("recovered (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Recovery of your tokens, per attack")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(keys) + 1, frameon=False)
    out["recovery"] = _png(fig)
    curve = audit.get("curve") or {}
    points = curve.get("points") or []
    if points:
        fig, ax = plt.subplots(figsize=(8, 3.4))
        xs = [p["value"] for p in points]
        ax.plot(xs, [100 * p["privacy"] for p in points], "o-", label="privacy (all tokens)")
        if all(p.get("content_privacy") is not None for p in points):
            ax.plot(xs, [100 * p["content_privacy"] for p in points], "s--", label="privacy (content words)")
        ax.axvline(curve["chosen"], color="#e8590c", lw=1, ls=":", label="your setting")
        ax.set_xlabel(curve["parameter"])
        ax.set_ylabel("empirical privacy (%)")
        ax.set_ylim(0, 100)
        utility = [(p["value"], p["utility"]["accuracy"]) for p in points
                   if (p.get("utility") or {}).get("accuracy") is not None]
        if utility:
            twin = ax.twinx()
            twin.plot(*zip(*utility), "d-", color="green", label="frontier accuracy")
            twin.set_ylabel("accuracy (frontier)")
            twin.legend(fontsize=8, loc="lower right")
        ax.set_title(f"Privacy against {curve['parameter']} (attacks: {', '.join(curve['attacks'])})")
        ax.legend(fontsize=8, loc="upper left")
        out["curve"] = _png(fig)
    return out


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure_rows(audit: dict) -> list[list]:
    return [[f["label"], _pct(f["recovery"]), f["attack"], _pct(f["floor"]), _pct(f["top5_recovery"]),
             f.get("n_tokens") or "–"] for f in audit["figures"].values()]


FIGURE_HEADER = ["tokens", "recovered", "by attack", "floor", "top-5", "count"]


def _task_text(audit: dict) -> str:
    if audit.get("task_words") is None:
        return "No label column given: task words not measured."
    floor = "The floor is what a blind guess from public text and the sentence lengths recovers."
    if not audit["task_words"]:
        return (f"Task words: CTI finds no token that carries your labels in {audit['n_texts']} texts (a token must "
                f"appear at least 5 times, clearly more often in one class). {floor}")
    n = audit["n_task_words"]
    words = ", ".join(f"“{w}”" for w in audit["task_words"])
    return (f"Task words: the {n} token{'s' if n != 1 else ''} CTI finds carrying your labels (top: {words}). "
            f"{floor}")


def _attack_rows(audit: dict) -> list[list]:
    return [[n, _pct(r.get("token_recovery")), _pct(r.get("content_recovery")), _pct(r.get("task_recovery")),
             f"{r.get('seconds', 0):.1f}s"] for n, r in audit["results"].items()]


ATTACK_HEADER = ["attack", "all tokens", "content", "task words", "time"]


def _options_text(audit: dict) -> str:
    options = audit["setting"].get("attack_options") or {}
    text = "".join(f"{n} does not apply: {why}. " for n, why in audit["skipped"].items()) + "Attack options: " + (", ".join(f"{k}={v}" for k, v in options.items()) or "the attacks' defaults")
    if options.get("noise") == "once":
        text += (" (noise=once: your noise is drawn once per sentence, as `splitpriv train` does by default when it "
                 "sees a sentence more than once; --noise fresh if you draw it anew every step)")
    return text + "."


def _curve_rows(audit: dict) -> list[list]:
    curve = audit["curve"]
    return [[f"{p['value']:g}" + (" (yours)" if p["factor"] == 1.0 else ""), _pct(p["privacy"]),
             _pct(p["content_privacy"]), p["strongest_attack"],
             _pct((p.get("utility") or {}).get("accuracy")) if p.get("utility") else "not measured"]
            for p in curve["points"]]


def _curve_header(audit: dict) -> list[str]:
    return [audit["curve"]["parameter"], "privacy", "content privacy", "strongest", "frontier accuracy"]


def _notes(audit: dict) -> list[str]:
    notes = [audit["curve"].get("note")] if audit["curve"].get("note") else []
    frontier = audit.get("frontier") or {}
    if frontier.get("note"):
        notes.append(f"Utility: {frontier['note']}.")
    elif frontier:
        notes.append(f"Utility at your setting ({frontier.get('experiment', 'frontier')}): accuracy "
                     f"{_pct(frontier.get('accuracy'))} vs baseline {_pct(frontier.get('baseline'))}.")
        if frontier.get("total_blocks") is not None:
            notes.append(
                f"There you hold {frontier['customer_blocks']} of {frontier['total_blocks']} blocks "
                f"({_pct(frontier.get('disclosure'))} of the vendor's parameters) and do "
                f"{_pct(frontier.get('customer_compute_share'))} of the training compute; alone you would reach "
                f"{_pct(frontier.get('local_only_accuracy'))}; the set-level attack names "
                f"{_pct(frontier.get('set_recovery'))} of a sentence's content words (public guess "
                f"{_pct(frontier.get('set_floor'))}); the label attack reads {_pct(frontier.get('label_attack'))}.")
    return notes


def _measured(audit: dict, key: str, absent: str) -> tuple[dict | None, str | None]:
    """``(section, None)`` when ``audit[key]`` was measured, else ``(None, why not)``."""
    entry = audit.get(key)
    if entry is None or "success" not in entry:
        return None, absent if entry is None else entry.get("note", "")
    return entry, None


def _label_text(audit: dict) -> str:
    labels, why = _measured(audit, "labels", "No label column given: label leakage not measured.")
    if why is not None:
        return why
    dp = labels.get("label_dp_epsilon")
    line = (f"With the classification head held by the {labels['head']}"
            f"{f' and label DP ε = {dp:g}' if dp is not None else ' and no label DP'}, the vendor infers "
            f"{_pct(labels['success'])} of your training labels ({labels['n_rows']} rows in a short simulated "
            f"training run; the {labels.get('best_attack', labels['attack'])} attack); from the representations alone "
            f"it gets {_pct(labels.get('floor_accuracy'))}.")
    if labels.get("expected_rr_accuracy") is not None:
        kept = _pct(labels["expected_rr_accuracy"])
        line += (f" Label DP's randomized response keeps a label with probability {kept}: a vendor that reads the "
                 "labels sent exactly gets about that.")
    return line


def _attribute_text(audit: dict) -> str:
    attr, why = _measured(audit, "attribute", "No attribute column given.")
    if why is not None:
        return why
    return (f"Attribute {attr['attribute']!r}: the vendor's classifier reaches {_pct(attr.get('accuracy'))} against a "
            f"majority rate of {_pct(attr.get('majority_accuracy'))}: an advantage of {_pct(attr['success'])} "
            f"({attr['n_aux']} rows to train on, {attr['n_victims']} attacked).")


def _setting_text(audit: dict) -> str:
    s = audit["setting"]
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["mechanism"].items()
                       if k != "name")
    mech = s["mechanism"]["name"] + (f" ({params})" if params else "")
    priv = f", privatizer {s['privatizer']}" if s.get("privatizer") else ""
    model = audit["config"].get("model_name") or "all-MiniLM-L6-v2 (default)"
    return (f"{audit['n_texts']} texts (column {audit['text_column']!r}); model {model}; "
            f"k = {s['n_bottom_layers']}; mechanism {mech}{priv}; CTI {'on' if s['cti'] else 'off'}; seed {s['seed']}")


def _sample_html(audit: dict) -> str:
    out = []
    for sentence in audit["sample"]["sentences"]:
        toks = "".join(
            f'<span class="tok {"hit" if t["recovered"] else "miss"}">{escape(t["token"])}'
            f'<span class="g">{escape(t["guess"])}</span></span>' for t in sentence["tokens"])
        out.append(f'<div class="sentence">{toks}</div>')
    return "\n".join(out) or "<p>No attack kept per-token guesses.</p>"


def render_html(audit: dict, images: dict[str, bytes]) -> str:
    curve = audit["curve"]
    curve_html = (_table(_curve_header(audit), _curve_rows(audit)) if curve["points"] else "") + _img(
        images.get("curve"), "privacy curve") + "".join(f"<p class='muted'>{escape(n)}</p>" for n in _notes(audit))
    return PAGE.substitute(
        name=escape(Path(audit["file"]).name), file=escape(audit["file"]), setting=escape(_setting_text(audit)),
        verdict=escape(audit["verdict"]),
        privacy=_pct(audit["empirical_privacy"]), strongest=escape(str(audit["strongest_attack"])),
        floor=_pct(audit["floor"]), figures=_table(FIGURE_HEADER, _figure_rows(audit)),
        task_words=escape(_task_text(audit)),
        recovery_plot=_img(images.get("recovery"), "recovery per attack"),
        attacks=_table(ATTACK_HEADER, _attack_rows(audit)), attack_options=escape(_options_text(audit)),
        curve=curve_html,
        sample_attack=escape(f"attack: {audit['sample']['attack']}"), sample=_sample_html(audit),
        labels=f"<p>{escape(_label_text(audit))}</p>", attribute=f"<p>{escape(_attribute_text(audit))}</p>",
        footer=escape(f"splitpriv audit; {audit['seconds']:.0f} s; recovery counts wordpiece tokens; the attacker "
                      "trains only on public text (WikiText-2)."))


def _cell(c) -> str:
    return str(c).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(_cell, row)) + " |" for row in rows), ""]


def render_markdown(audit: dict, image_files: dict[str, str]) -> str:
    """The same report in Markdown; plots by file name (written next to it)."""
    lines = [f"# Privacy audit of {Path(audit['file']).name}", "", f"{audit['file']}: {_setting_text(audit)}", "",
             f"**{audit['verdict']}**", "",
             (f"Empirical privacy {_pct(audit['empirical_privacy'])} (strongest: {audit['strongest_attack']}); "
              f"prior-only floor {_pct(audit['floor'])}."), "", *_md_table(FIGURE_HEADER, _figure_rows(audit)),
             _task_text(audit), ""]
    if "recovery" in image_files:
        lines += [f"![recovery per attack]({image_files['recovery']})", ""]
    lines += ["## Every attack", "", *_md_table(ATTACK_HEADER, _attack_rows(audit)), _options_text(audit), "",
              "## Privacy against the noise parameter",
              ""]
    if audit["curve"]["points"]:
        lines += _md_table(_curve_header(audit), _curve_rows(audit))
    if "curve" in image_files:
        lines += [f"![privacy curve]({image_files['curve']})", ""]
    lines += [*(f"{n}\n" for n in _notes(audit)), "## Your sentences as the vendor would read them", "",
              f"Recovered tokens in **bold**, others as `token→guess` (attack: {audit['sample']['attack']}).", ""]
    for sentence in audit["sample"]["sentences"]:
        lines += [" ".join(f"**{t['token']}**" if t["recovered"] else f"`{t['token']}→{t['guess']}`"
                           for t in sentence["tokens"]), ""]
    lines += ["## Labels", "", _label_text(audit), "", "## Author attribute", "", _attribute_text(audit), ""]
    return "\n".join(lines)
