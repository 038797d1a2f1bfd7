"""What a split discloses: the weights the vendor ships to the customer (bottom, and a causal LM's tail) against
those it keeps (the top), as counted by :meth:`splitpriv.parts.SplitModel.disclosure` (a tied weight once)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Disclosure:
    """What the vendor ships to the customer (the bottom, and a causal LM's tail) against what it keeps (the top)."""

    model_type: str
    n_bottom_layers: int
    n_layers: int
    shipped_parameters: int
    kept_parameters: int
    shipped_names: list[str] = field(repr=False)
    n_tail_layers: int = 0

    @property
    def total_parameters(self) -> int:
        return self.shipped_parameters + self.kept_parameters

    @property
    def shipped_share(self) -> float:
        return self.shipped_parameters / self.total_parameters

    def to_dict(self) -> dict:
        return {**asdict(self), "total_parameters": self.total_parameters, "shipped_share": self.shipped_share}

    def __str__(self) -> str:
        tail = f", tail = {self.n_tail_layers} blocks + norm + LM head" if self.n_tail_layers else ""
        return (
            f"{self.model_type}: bottom = embeddings + {self.n_bottom_layers}/{self.n_layers} blocks{tail}; "
            f"shipped {self.shipped_parameters:,} of {self.total_parameters:,} parameters "
            f"({100 * self.shipped_share:.1f}%), kept {self.kept_parameters:,}"
        )
