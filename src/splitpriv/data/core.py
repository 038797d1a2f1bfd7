"""The in-memory dataset type shared by every loader."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


class DatasetNotFoundError(LookupError):
    """A dataset (or one of its files) could not be found locally, in the package or on the Hub."""


@dataclass(frozen=True)
class TextDataset:
    """Texts with optional integer labels and private attributes, row-aligned.

    ``labels`` is ``None`` when the set has no task label (e.g. trustpilot, SST-2 test);
    ``label_names[i]`` names class id ``i``; ``attributes`` maps an attribute name
    (``"gender"``, ``"age_group"``, ...) to one string per text.
    """

    name: str
    split: str
    texts: list[str]
    labels: list[int] | None
    label_names: tuple[str, ...]
    attributes: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.texts)
        if self.labels is not None:
            if len(self.labels) != n:
                raise ValueError(f"{self.name}/{self.split}: {len(self.labels)} labels for {n} texts")
            k = len(self.label_names)
            bad = [y for y in self.labels if not (0 <= y < k)]
            if bad:
                raise ValueError(
                    f"{self.name}/{self.split}: label id {bad[0]} out of range for label_names {self.label_names}"
                )
        for key, values in self.attributes.items():
            if len(values) != n:
                raise ValueError(f"{self.name}/{self.split}: attribute {key!r} has {len(values)} values for {n} texts")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.texts)

    def label_counts(self) -> dict[str, int]:
        """Rows per label name (every name present, zero counts included); empty when unlabelled."""
        if self.labels is None:
            return {}
        c = Counter(self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(self.label_names)}

    def subset(self, indices: Iterable[int]) -> TextDataset:
        """The rows at ``indices``, in that order."""
        idx = [int(i) for i in indices]
        n = len(self.texts)
        for i in idx:
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {self.name}/{self.split} with {n} rows")
        return TextDataset(
            name=self.name,
            split=self.split,
            texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            label_names=self.label_names,
            attributes={k: [v[i] for i in idx] for k, v in self.attributes.items()},
            source=self.source,
        )

    def head(self, n: int) -> TextDataset:
        """The first ``n`` rows."""
        return self.subset(range(min(max(n, 0), len(self))))

    def shuffled(self, seed: int = 0) -> TextDataset:
        """All rows in a seeded random order."""
        idx = list(range(len(self)))
        random.Random(seed).shuffle(idx)
        return self.subset(idx)

    def sample(self, n: int, seed: int = 0) -> TextDataset:
        """A seeded random subset of ``n`` rows (all rows if ``n >= len``), kept in the original order."""
        return self.subset(sample_indices(len(self), n, seed))


def sample_indices(total: int, n: int | None, seed: int) -> Sequence[int]:
    """Sorted indices of a seeded random subset of size ``n`` (``range(total)`` when ``n`` is None or >= total)."""
    if n is None:
        return range(total)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"limit must be a positive integer or None, got {n!r}")
    if n >= total:
        return range(total)
    return sorted(random.Random(seed).sample(range(total), n))
