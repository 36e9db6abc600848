"""Asset check results as ``jrr run`` reports them: one line each, counts and first examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jrr_pipeline.ml.settings.base import shown

EXAMPLES = 3  # ids shown per failed check


@dataclass(frozen=True)
class CheckReport:
    """One check evaluation: which check, whether it passed, its severity and its metadata."""

    asset: str
    name: str
    passed: bool
    severity: str  # "ERROR" or "WARN"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.asset}:{self.name}"

    @property
    def blocking(self) -> bool:
        """A failed ERROR check: the run fails and what lies below the asset does not run."""
        return not self.passed and self.severity == "ERROR"

    def line(self) -> str:
        """``check qrels:qrels_no_split_leak failed (ERROR): 1 of 61 queries ..., e.g. 'q1'``."""
        return f"check {self.key} failed ({self.severity}): {self.summary()}"

    def summary(self) -> str:
        meta = self.metadata
        if "count" in meta and "what" in meta:
            text = f"{meta['count']} of {meta.get('total', '?')} {meta['what']}"
        else:
            text = ", ".join(f"{k} {shown(v)}" for k, v in meta.items()
                             if not isinstance(v, list | dict)) or "no details"
        examples = next((v for k, v in meta.items() if isinstance(v, list) and v
                         and ("example" in k or "sample" in k)), None)
        if examples:
            text += ", e.g. " + ", ".join(shown(e) for e in examples[:EXAMPLES])
        return text


def check_report(evaluation) -> CheckReport:
    """A ``CheckReport`` of a Dagster ``AssetCheckEvaluation``."""
    return CheckReport(
        asset=evaluation.asset_key.to_user_string(), name=evaluation.check_name,
        passed=evaluation.passed, severity=evaluation.severity.value,
        metadata={k: getattr(v, "value", v) for k, v in evaluation.metadata.items()})
