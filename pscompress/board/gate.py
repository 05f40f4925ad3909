"""Budgets that a CI build must hold, checked on eval results, and the reports CI systems read.

A candidate result is compared with absolute limits (minimum accuracy, maximum file size)
and, when there is one, with a reference result: a baseline record from an earlier
``pscompress eval --json`` or another model measured in the same run. Accuracies and
disagreement are fractions here; the CLI takes percentages.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields
from typing import Callable, Sequence

from pscompress.board.evaluate import EvalResult, disagreement
from pscompress.core.errors import UserError

# Accuracies are ratios of integers; this keeps "drop 0 <= budget 0" from failing on rounding.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Budgets:
    """Limits a candidate must stay within; None means "not checked"."""

    min_accuracy: float | None = None  # top-1, fraction
    min_top5: float | None = None  # fraction
    max_drop: float | None = None  # reference top-1 minus candidate top-1, fraction
    max_disagreement: float | None = None  # fraction of images whose top-1 differs from the reference's
    max_size: int | None = None  # bytes
    max_size_ratio: float | None = None  # candidate file size / reference file size
    max_latency_ratio: float | None = None  # candidate / reference per-image latency, p50

    def set_names(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


# Budgets that compare with a reference, and those that need it measured on the very same images.
_NEEDS_REFERENCE = {"max_drop", "max_disagreement", "max_size_ratio", "max_latency_ratio"}
_NEEDS_SAME_DATA = {"max_drop", "max_disagreement"}


@dataclass
class Outcome:
    """One budget checked: what was measured against which limit."""

    budget: str  # the CLI option, e.g. "--max-drop"
    title: str
    limit: str
    measured: str
    passed: bool


def option_name(field_name: str) -> str:
    """The `pscompress check` flag that sets a budget: how reports name it."""
    return "--" + field_name.replace("_", "-")


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _points(value: float) -> str:
    return f"{value * 100:.2f} points"


def _bytes(value: float) -> str:
    return f"{int(value):,} bytes ({value / 1024:.1f} KiB)"


def _ratio(value: float) -> str:
    return f"{value:.3f}x"


def require_checkable(budgets: Budgets, has_reference: bool) -> None:
    """Raise UserError, before anything is measured, for budgets that cannot be checked."""
    names = budgets.set_names()
    if not names:
        every = [f.name for f in fields(Budgets)]
        raise UserError("no budget given: set at least one of " + _quoted(every), *every)
    needing = [n for n in names if n in _NEEDS_REFERENCE]
    if needing and not has_reference:
        raise UserError(f"{_quoted(needing)}: compared with a reference, so give `baseline` or `reference`",
                        *needing, "baseline", "reference")


def check(candidate: EvalResult, budgets: Budgets, reference: EvalResult | None = None) -> list[Outcome]:
    """Check every budget that is set. Raises UserError for budgets that cannot be checked."""
    require_checkable(budgets, reference is not None)
    names = budgets.set_names()
    same_data = [n for n in names if n in _NEEDS_SAME_DATA]
    if same_data and reference.data.get("sha256") != candidate.data.get("sha256"):
        raise UserError(
            f"{_quoted(same_data)}: both models must be measured on the same images, but the reference saw "
            f"{reference.data.get('images')} images of {reference.data.get('name')} and this run "
            f"{candidate.data.get('images')} of {candidate.data.get('name')} (different contents): use the same "
            "`data`/`split`/`limit`", *same_data, "data", "split", "limit")
    if budgets.min_top5 is not None and candidate.top5 is None:
        raise UserError("`min_top5` needs more than five classes", "min_top5")

    checks: dict[str, Callable[[float], Outcome]] = {
        "min_accuracy": lambda limit: _at_least("top-1 accuracy", candidate.top1, limit, _pct),
        "min_top5": lambda limit: _at_least("top-5 accuracy", candidate.top5, limit, _pct),
        "max_drop": lambda limit: _at_most("top-1 accuracy drop from the reference",
                                            reference.top1 - candidate.top1, limit, _points),
        "max_disagreement": lambda limit: _at_most("top-1 disagreement with the reference",
                                                    disagreement(candidate.predictions, reference.predictions), limit, _pct),
        "max_size": lambda limit: _at_most("model file size", candidate.model["size_bytes"], limit, _bytes),
        "max_size_ratio": lambda limit: _at_most("file size / reference file size",
                                                  candidate.model["size_bytes"] / reference.model["size_bytes"], limit, _ratio),
        "max_latency_ratio": lambda limit: _at_most("per-image latency (p50) / reference's",
                                                     candidate.latency.image_p50 / reference.latency.image_p50, limit, _ratio),
    }
    return [_named(checks[name](getattr(budgets, name)), name) for name in names]


def _at_least(title: str, value: float, limit: float, fmt: Callable[[float], str]) -> Outcome:
    return Outcome("", title, f">= {fmt(limit)}", fmt(value), value >= limit - _TOLERANCE)


def _at_most(title: str, value: float, limit: float, fmt: Callable[[float], str]) -> Outcome:
    return Outcome("", title, f"<= {fmt(limit)}", fmt(value), value <= limit + _TOLERANCE)


def _named(outcome: Outcome, field_name: str) -> Outcome:
    outcome.budget = option_name(field_name)
    return outcome


def passed(outcomes: list[Outcome]) -> bool:
    return all(o.passed for o in outcomes)


def junit_xml(outcomes: list[Outcome], candidate: EvalResult, seconds: float) -> str:
    """One JUnit test case per budget; a broken budget is a <failure>."""
    failures = sum(not o.passed for o in outcomes)
    suites = ET.Element("testsuites", name="pscompress check", tests=str(len(outcomes)), failures=str(failures),
                        errors="0", time=f"{seconds:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=f"pscompress check {candidate.model.get('path')}", tests=str(len(outcomes)),
                          failures=str(failures), errors="0", skipped="0", time=f"{seconds:.3f}")
    properties = ET.SubElement(suite, "properties")
    for key, value in (("model", candidate.model.get("path")), ("data", candidate.data.get("name")),
                       ("images", candidate.data.get("images")), ("top1", candidate.top1)):
        ET.SubElement(properties, "property", name=key, value=str(value))
    for outcome in outcomes:
        case = ET.SubElement(suite, "testcase", classname="pscompress.check", name=f"{outcome.budget} {outcome.title}", time="0")
        if not outcome.passed:
            failure = ET.SubElement(case, "failure", type="regression",
                                    message=f"{outcome.title}: {outcome.measured}, budget {outcome.limit}")
            failure.text = f"{outcome.budget}: measured {outcome.measured}, budget {outcome.limit}"
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def markdown(outcomes: list[Outcome], candidate: EvalResult, reference: EvalResult | None = None,
             reference_label: str | None = None) -> str:
    """A summary for humans and for $GITHUB_STEP_SUMMARY."""
    ok = passed(outcomes)
    model = candidate.model
    native = "" if model.get("native") is None else f", native kernel {'on' if model['native'] else 'off'}"
    lines = [
        f"## pscompress check: {'passed' if ok else 'FAILED'} {'✅' if ok else '❌'}",
        "",
        f"Model `{model.get('path')}` ({model.get('format')}{native}) on {candidate.data.get('name')}, "
        f"{candidate.data.get('images'):,} images" + (f"; reference: {reference_label}." if reference_label else "."),
        "",
        "| | Budget | Limit | Measured |",
        "|---|---|---|---|",
    ]
    lines += [f"| {'✅' if o.passed else '❌'} | {o.title} (`{o.budget}`) | {o.limit} | {o.measured} |" for o in outcomes]
    lines += ["", "| | top-1 | top-5 | file size | latency per image (p50) |", "|---|---|---|---|---|"]
    for label, result in (("this model", candidate), ("reference", reference)):
        if result is not None:
            top5 = "n/a" if result.top5 is None else _pct(result.top5)
            lines.append(f"| {label} | {_pct(result.top1)} | {top5} | {result.model.get('size_bytes', 0):,} bytes | "
                         f"{result.latency.image_p50:.3f} ms |")
    return "\n".join(lines) + "\n"


def format_outcomes(outcomes: list[Outcome]) -> str:
    """The plain-text table ``pscompress check`` prints."""
    width = max(len(f"{o.title} ({o.budget})") for o in outcomes)
    rows = [f"{'PASS' if o.passed else 'FAIL'}  {f'{o.title} ({o.budget})':<{width}}  {o.measured}  (budget {o.limit})"
            for o in outcomes]
    failures = sum(not o.passed for o in outcomes)
    rows.append("all budgets hold" if not failures else f"{failures} of {len(outcomes)} budgets broken")
    return "\n".join(rows)
