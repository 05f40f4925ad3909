"""`pscompress check`: budgets, exit statuses 0/1/2, JUnit XML and markdown reports."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from gate_fixtures import fit_linear, linear_module, save_module, torch_predictions
from pscompress.board.data import load_dataset
from pscompress.board.evaluate import EvalResult, Latency, evaluate_file
from pscompress.board.gate import Budgets, check, junit_xml, markdown
from pscompress.core.errors import UserError

LIMIT = 400


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A fitted linear classifier and a perturbed copy that disagrees with it on some images."""
    weight, bias = fit_linear()
    noise = np.random.default_rng(0).normal(scale=weight.std(), size=weight.shape).astype(np.float32)
    folder = tmp_path_factory.mktemp("check")
    a, b = linear_module(weight, bias), linear_module(weight + noise, bias)
    return {"a": (a, save_module(a, folder / "a.pt")), "b": (b, save_module(b, folder / "b.pt"))}


@pytest.fixture(scope="module")
def expected(models):
    """Independent oracle: accuracy and disagreement from torch's own predictions."""
    data = load_dataset("fashion-mnist", "test").subset(LIMIT)
    pa, pb = (torch_predictions(models[k][0], data.x) for k in "ab")
    return {"top1_a": np.mean(pa == data.y), "top1_b": np.mean(pb == data.y), "disagreement": np.mean(pa != pb)}


@pytest.fixture(scope="module")
def baseline(models, tmp_path_factory):
    """Model a's eval record, as `pscompress eval --json` writes it and CI commits it."""
    path = tmp_path_factory.mktemp("baseline") / "baseline.json"
    data = load_dataset("fashion-mnist", "test").subset(LIMIT)
    result = evaluate_file(models["a"][1], data, spec="fashion-mnist", split="test", threads=1, trust_pickle=True)
    path.write_text(result.dumps())
    return path


def _check(run_cli, args):
    return run_cli("check", *args, "--trust-pickle", "--threads", 1)


def test_model_against_its_own_baseline_passes(models, baseline, expected, tmp_path, run_cli):
    junit, summary = tmp_path / "gate.xml", tmp_path / "gate.md"
    code, stdout, _ = _check(run_cli, [models["a"][1], "--baseline", baseline, "--min-accuracy", 70, "--max-drop", 0,
                              "--max-disagreement", 0, "--junit", junit, "--summary", summary])
    assert code == 0, stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "0" and not suite.findall("testcase/failure")
    assert "passed" in summary.read_text() and f"{expected['top1_a']:.2%}" in summary.read_text()


@pytest.mark.parametrize("compare", ["baseline", "reference"])
def test_disagreement_budget_uses_the_exact_disagreement(models, baseline, expected, compare, tmp_path, run_cli):
    disagreement = expected["disagreement"] * 100
    assert 1 < disagreement < 50  # the perturbed model disagrees on some images, not all
    against = ["--baseline", baseline] if compare == "baseline" else \
        ["--reference", models["a"][1], "--data", "fashion-mnist", "--limit", LIMIT]
    step = 100 / LIMIT / 2  # half an image
    code, stdout, _ = _check(run_cli, [models["b"][1], *against, "--max-disagreement", disagreement + step])
    assert code == 0, stdout
    assert f"{disagreement:.2f}%" in stdout

    junit, summary = tmp_path / "gate.xml", tmp_path / "gate.md"
    code, stdout, _ = _check(run_cli, [models["b"][1], *against, "--max-disagreement", disagreement - step, "--min-accuracy", 1,
                              "--junit", junit, "--summary", summary])
    assert code == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    failures = suite.findall("testcase/failure")
    assert suite.get("tests") == "2" and suite.get("failures") == "1" and len(failures) == 1
    assert "--max-disagreement" in failures[0].text and f"{disagreement:.2f}%" in failures[0].get("message")
    assert "FAILED" in summary.read_text() and "❌" in summary.read_text()


def test_accuracy_drop_budget(models, baseline, expected, run_cli):
    drop = (expected["top1_a"] - expected["top1_b"]) * 100
    assert drop > 0.5
    code, _, _ = _check(run_cli, [models["b"][1], "--baseline", baseline, "--max-drop", drop + 0.1])
    assert code == 0
    code, stdout, _ = _check(run_cli, [models["b"][1], "--baseline", baseline, "--max-drop", drop - 0.1])
    assert code == 1 and "FAIL" in stdout


def test_size_and_latency_budgets(models, run_cli):
    model = models["a"][1]
    size = model.stat().st_size
    code, _, _ = _check(run_cli, [model, "--data", "fashion-mnist", "--limit", 100, "--max-size", size])
    assert code == 0
    code, _, _ = _check(run_cli, [model, "--data", "fashion-mnist", "--limit", 100, "--max-size", "1K"])
    assert code == 1
    code, stdout, _ = _check(run_cli, [model, "--reference", model, "--data", "fashion-mnist", "--limit", 100,
                              "--max-size-ratio", 1, "--max-latency-ratio", 1000])
    assert code == 0 and "1.000x" in stdout


def test_usage_errors_exit_2(models, baseline, tmp_path, run_cli):
    model = models["a"][1]
    np.savez(tmp_path / "rgb.npz", x=np.zeros((4, 3, 28, 28), np.uint8), y=np.arange(4))
    (tmp_path / "not-a-record.json").write_text("{}")
    cases = [
        ([model, "--data", "fashion-mnist"], "no budget"),
        ([model, "--data", "fashion-mnist", "--max-drop", 1], "give --baseline or --reference"),
        ([model, "--baseline", baseline, "--reference", model, "--max-drop", 1], "not both"),
        ([model, "--baseline", baseline, "--max-size", "12Q"], "not a size"),
        ([model, "--baseline", baseline, "--limit", 10, "--max-disagreement", 1], "same images"),
        ([model, "--reference", model, "--data", tmp_path / "rgb.npz", "--max-drop", 1], "3-channel images"),
        ([model, "--baseline", tmp_path / "not-a-record.json", "--max-drop", 1], "not a pscompress eval record"),
        ([model, "--baseline", tmp_path / "missing.json", "--max-drop", 1], "cannot read"),
    ]
    for args, message in cases:
        code, stdout, stderr = _check(run_cli, args)
        assert code == 2, (args, stdout, stderr)
        assert message in stderr and "Traceback" not in stderr, (args, stderr)


def _result(top1: float, predictions: list[int], size: int = 1000, p50: float = 1.0, sha: str = "same") -> EvalResult:
    return EvalResult(model={"path": "m.onnx", "format": "onnx", "size_bytes": size, "native": True},
                      data={"name": "d", "images": len(predictions), "sha256": sha}, classes=["a", "b"],
                      top1=top1, top5=None, per_class={"a": top1, "b": top1},
                      latency=Latency(10, 1, p50 * 10, p50 * 10, p50, p50, p50),
                      predictions=np.asarray(predictions))


def test_budgets_hold_exactly_at_their_limits():
    reference = _result(0.9, [0, 1, 0, 1])
    candidate = _result(0.85, [0, 1, 1, 1], size=500, p50=2.0)
    limits = Budgets(min_accuracy=0.85, max_drop=0.05, max_disagreement=0.25, max_size=500,
                     max_size_ratio=0.5, max_latency_ratio=2.0)
    outcomes = check(candidate, limits, reference)
    assert [o.passed for o in outcomes] == [True] * 6
    tighter = Budgets(min_accuracy=0.851, max_drop=0.049, max_disagreement=0.24, max_size=499,
                      max_size_ratio=0.49, max_latency_ratio=1.99)
    outcomes = check(candidate, tighter, reference)
    assert [o.passed for o in outcomes] == [False] * 6
    root = ET.fromstring(junit_xml(outcomes, candidate, 1.0))
    assert len(root.findall("testsuite/testcase/failure")) == 6
    assert markdown(outcomes, candidate, reference, "baseline").count("❌") == 7  # six rows and the title


def test_budgets_that_cannot_be_checked():
    candidate = _result(0.5, [0, 1])
    with pytest.raises(UserError, match="no budget"):
        check(candidate, Budgets())
    with pytest.raises(UserError, match="reference"):
        check(candidate, Budgets(max_size_ratio=1.0))
    with pytest.raises(UserError, match="same images"):
        check(candidate, Budgets(max_drop=0.1), _result(0.5, [0, 1], sha="other"))
    with pytest.raises(UserError, match="five classes"):
        check(candidate, Budgets(min_top5=0.5))
