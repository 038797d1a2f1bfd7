"""Turning raw WikiText lines into clean sentences (public auxiliary text for attacks)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_AT_SPLIT = re.compile(r"\s*@([-,.])@\s*")
_SENTENCE_END = re.compile(r"(?<= [.!?]) (?=\S)")


def is_title(line: str) -> bool:
    """``True`` for WikiText heading lines such as `` = Title = `` or `` = = Section = = ``."""
    s = line.strip()
    return len(s) >= 3 and s.startswith("= ") and s.endswith(" =")


def wikitext_sentences(lines: Iterable[str], *, min_words: int = 5) -> list[str]:
    """Sentences of WikiText paragraphs: no blank or title lines, ``@-@`` / ``@,@`` / ``@.@`` joined,
    split after a space-separated ``.``, ``!`` or ``?``, sentences with ``<unk>`` or fewer than
    ``min_words`` words dropped. The text stays tokenised (spaces around punctuation)."""
    out = []
    for line in lines:
        para = " ".join(line.split())
        if not para or is_title(para):
            continue
        para = _AT_SPLIT.sub(r"\1", para)
        for sent in _SENTENCE_END.split(para):
            sent = sent.strip()
            if "<unk>" not in sent and len(sent.split()) >= min_words:
                out.append(sent)
    return out
