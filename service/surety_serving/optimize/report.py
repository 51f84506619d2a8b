"""What a run of the pass did: the nodes replaced, those left and why, and the output drift."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Change:
    """One node the pass looked at: ``kind`` is the rewrite ("softmax", "attention",
    "multi_head_attention"); ``detail`` says what was folded, or why nothing was done."""

    node: str
    kind: str
    detail: str


@dataclass
class Report:
    """Filled in as the pass runs; ``drift`` maps each output to max |rewritten − original| over
    the sample inputs (absent until the check has run)."""

    replaced: list[Change] = field(default_factory=list)
    skipped: list[Change] = field(default_factory=list)
    drift: dict[str, float] = field(default_factory=dict)
    tolerance: float | None = None

    def replace(self, node: str, kind: str, detail: str) -> None:
        self.replaced.append(Change(node, kind, detail))

    def skip(self, node: str, kind: str, reason: str) -> None:
        self.skipped.append(Change(node, kind, reason))

    @property
    def max_drift(self) -> float:
        return max(self.drift.values(), default=0.0)

    def format(self) -> str:
        """The report as the CLI prints it."""
        lines = [f"replaced {len(self.replaced)} node(s)"]
        lines += [f"  {c.kind:<22} {c.node}: {c.detail}" for c in self.replaced]
        lines.append(f"skipped {len(self.skipped)} node(s)")
        lines += [f"  {c.kind:<22} {c.node}: {c.detail}" for c in self.skipped]
        if self.drift:
            lines.append(
                "drift, max |rewritten - original| / max(1, max |original|) per output "
                f"(tolerance {self.tolerance:g}):"
            )
            width = max(len(name) for name in self.drift)
            lines += [f"  {name:<{width}}  {value:.3g}" for name, value in self.drift.items()]
        return "\n".join(lines)
