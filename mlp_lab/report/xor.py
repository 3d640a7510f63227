"""The XOR question from `mlp_lab.xor`'s record, with a Clopper-Pearson interval."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scipy import stats


@dataclass
class XORFinding:
    """The XOR question from mlp_lab.xor's record: how many seeds solve it."""

    path: Path
    record: dict

    @property
    def words(self) -> dict:
        return self.record.get("study", {})

    def short(self) -> str:
        seeds = self.record["seeds"]
        solved = sum(s["solved"] for s in seeds)
        share = f"{solved} of {len(seeds)} seeds ({solved / len(seeds):.0%})"
        return f"{'Yes' if solved else 'No'}: solved by {share}"

    def answer(self) -> tuple[str, str]:
        """The answer in words and the agreement with the lab's "it learns XOR"."""
        seeds = self.record["seeds"]
        solved = [s for s in seeds if s["solved"]]
        ci = stats.binomtest(len(solved), len(seeds)).proportion_ci(0.95)
        failed = ", ".join(
            f"{s['seed']} (MSE {s['final_loss']:.3g})" for s in seeds if not s["solved"]
        )
        words = (
            f"{'Yes' if solved else 'No'}: solved by {len(solved)} of {len(seeds)} seeds "
            f"({len(solved) / len(seeds):.0%}; "
            f"95 % interval {ci.low:.0%} to {ci.high:.0%}, Clopper-Pearson)"
            + (f"; the others stall with a dead ReLU unit: seeds {failed}." if failed else ".")
        )
        word = "agrees" if ci.low > 0.5 else "differs" if ci.high < 0.5 else "cannot tell"
        return words, word


def xor_findings(dirs: Iterable[Path]) -> list[XORFinding]:
    """The XOR records (xor.json, written by `mlp_lab.xor xor.record=...`) below `dirs`."""
    paths = sorted({p for d in dirs for p in Path(d).rglob("xor.json")})
    return [XORFinding(p, json.loads(p.read_text())) for p in paths]
