"""Building a model ladder on the workstation: ``pscompress ladder build`` (docs/ladder.md).

Each rung is the dense model converted (pSConv at one pattern, or lean; virtual-pooled too for a
``+vip`` rung), fine-tuned with
distillation from the dense model, exported, quantized when asked, and tuned for this CPU at
batch 1; then its accuracy is measured on the held-out split. When every rung is built they are
timed together (``ladder_measure.time_rungs``), the monotone subset is kept and the manifest written.

Resumable: ``LADDER/build/`` keeps each fine-tuned checkpoint (with fine-tuning's own epoch
resume) and a record per finished rung; a rung whose record matches the recipe asked for now,
and whose file is the one recorded, is not rebuilt.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pscompress.board.data import ArrayDataset, load_dataset
from pscompress.board.evaluate import evaluate_file
from pscompress.board.ladder import MAX_RUNGS, MIN_GAIN, Manifest, Rung, monotone_subset, write_manifest
from pscompress.board.ladder_measure import time_rungs
from pscompress.board.onnx_reader import is_psconv, read_onnx
from pscompress.board.tune import cpu_model, tune_model
from pscompress.core.errors import UserError, short_repr
from pscompress.core.files import atomic_output
from pscompress.core.patterns import family_positions, parse_pattern
from pscompress.exporters.onnx_export import export_onnx
from pscompress.workstation.agreement import model_inputs
from pscompress.workstation.checkpoint import LoadedModel, load_model, save_checkpoint
from pscompress.workstation.finetune import FinetuneConfig, finetune, state_path
from pscompress.workstation.lean import leanify
from pscompress.workstation.model_io import default_input_shape
from pscompress.workstation.quantize import quantize_file
from pscompress.workstation.sparsify import SparsifyConfig, sparsify
from pscompress.workstation.virtual_pool import virtual_pool
from pscompress.workstation.virtual_pool_choice import AUTO, choose_layers, parse_auto

INT8_SUFFIX = "-int8"
VIP_SUFFIX = "+vip"
BUILD_FOLDER = "build"
_FAMILY = re.compile(r"^\d+of\d+$")


@dataclass(frozen=True)
class RungSpec:
    """One rung asked for: ``base`` is dense, lean or a pattern family (4of9), ``vip`` adds Virtual Pooling,
    ``int8`` its quantized form."""
    base: str
    int8: bool = False
    vip: bool = False

    @property
    def model(self) -> str:
        """The name of its fine-tuned model, shared by its fp32 and int8 rungs."""
        return self.base + (VIP_SUFFIX if self.vip else "")

    @property
    def name(self) -> str:
        return self.model + (INT8_SUFFIX if self.int8 else "")


@dataclass(frozen=True)
class LadderBuildConfig:
    """How every rung is made and measured; each rung's record holds what it was built with."""
    rungs: tuple[RungSpec, ...]
    epochs: int = 1
    limit: int | None = None  # training images per epoch (None: the whole training split)
    lr: float = FinetuneConfig.lr
    calibration: int = 100  # int8 rungs: calibration images
    threads: int | None = None  # latency and tuning: onnxruntime threads (None: its default)
    runs: int = 200  # timed batch-1 calls per rung
    min_gain: float = MIN_GAIN  # a kept rung is more than this fraction faster than the next kept one
    virtual_pool: tuple[str, ...] = (AUTO,)  # +vip rungs: the layers (globs, or auto[:LOSS])
    seed: int = 0


def parse_rungs(text: str) -> tuple[RungSpec, ...]:
    """'dense,6of9,4of9,4of9-int8,lean,4of9+vip' -> rung specs; UserError naming the first bad item."""
    specs = []
    for item in (part.strip() for part in text.split(",")):
        base, int8 = (item[: -len(INT8_SUFFIX)], True) if item.endswith(INT8_SUFFIX) else (item, False)
        base, vip = (base[: -len(VIP_SUFFIX)], True) if base.endswith(VIP_SUFFIX) else (base, False)
        if base not in ("dense", "lean") and not _is_family(base):
            raise UserError(f"`--patterns` item {short_repr(item)} is not dense, lean or a pattern family "
                            "such as 4of9 (each may add +vip, then -int8: 4of9+vip-int8)", "patterns")
        if base == "lean" and vip:
            raise UserError("`--patterns` item lean+vip: Virtual Pooling does not combine with lean layers",
                            "patterns")
        specs.append(RungSpec(base, int8, vip))
    names = [spec.name for spec in specs]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated:
        raise UserError(f"`--patterns` names {repeated} twice", "patterns")
    if not 1 <= len(specs) <= MAX_RUNGS:
        raise UserError(f"`--patterns` must name 1..{MAX_RUNGS} rungs, got {len(specs)}", "patterns")
    return tuple(specs)


def _is_family(base: str) -> bool:
    if not _FAMILY.match(base) or family_positions(base) is None:
        return False
    try:
        parse_pattern(base)
    except UserError:
        return False
    return True


def build_ladder(model_path: str | os.PathLike, spec: str, folder: str | os.PathLike, config: LadderBuildConfig, *,
                 arch: str | None = None, trust_pickle: bool = False, log: Callable[[str], None] = print,
                 progress: bool | None = None) -> Manifest:
    """Build, measure and write the ladder of the dense model at ``model_path`` into ``folder``."""
    _check_config(config)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"cannot write the ladder into {folder}: it is not a folder")
    (folder / BUILD_FOLDER).mkdir(parents=True, exist_ok=True)
    dense = load_model(model_path, arch=arch, trust_pickle=trust_pickle)
    if dense.arch is None:
        raise UserError(f"{model_path} is a pickled module of no built-in architecture: a ladder fine-tunes "
                        "its rungs, which needs a pscompress checkpoint")
    builder = _Builder(dense, Path(model_path), spec, folder, config, log, progress)
    if any(r.vip for r in config.rungs) and parse_auto(config.virtual_pool) is None:
        virtual_pool(copy.deepcopy(dense.module), config.virtual_pool, builder.shape)  # globs fail now, not mid-build
    rungs = [builder.rung(spec_, i, len(config.rungs)) for i, spec_ in enumerate(config.rungs, 1)]
    log(f"timing {len(rungs)} rung(s): {config.runs} batch-1 calls each, interleaved")
    for rung, latency in zip(rungs, time_rungs([folder / r.file for r in rungs], config.threads, config.runs,
                                               progress=progress)):
        rung.latency_ms = latency
    monotone_subset(rungs, min_gain=config.min_gain)
    manifest = Manifest(cpu=cpu_model(), threads=config.threads, rungs=rungs)
    write_manifest(folder, manifest)
    return manifest


def _check_config(config: LadderBuildConfig) -> None:
    checks = [("epochs", config.epochs >= 0, "at least 0"), ("limit", config.limit is None or config.limit >= 1,
                                                              "at least 1"),
              ("lr", config.lr > 0, "positive"), ("calibration", config.calibration >= 1, "at least 1"),
              ("threads", config.threads is None or config.threads >= 1, "at least 1"),
              ("runs", config.runs >= 10, "at least 10"), ("min_gain", 0 <= config.min_gain < 1, "in [0, 1)")]
    for name, ok, what in checks:
        if not ok:
            raise UserError(f"`{name}` must be {what}, got {getattr(config, name)!r}", name)
    if not config.virtual_pool:
        raise UserError("`virtual_pool` must name layers (globs) or be auto", "virtual_pool")
    parse_auto(config.virtual_pool)


class _Builder:
    """The steps of one ladder build, with the data sets, the teacher and the folders they share."""

    def __init__(self, dense: LoadedModel, model_path: Path, spec: str, folder: Path, config: LadderBuildConfig,
                 log: Callable[[str], None], progress: bool | None) -> None:
        self.dense, self.model_path, self.spec, self.config = dense, model_path, spec, config
        self.folder, self.work = folder, folder / BUILD_FOLDER
        self.log, self.progress = log, progress
        self.shape = default_input_shape(dense.module, dense.meta)
        self.source_sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
        self._data: dict[str, ArrayDataset] = {}

    def data(self, split: str) -> ArrayDataset:
        if split not in self._data:
            self._data[split] = load_dataset(self.spec, split)
        return self._data[split]

    def rung(self, spec: RungSpec, index: int, count: int) -> Rung:
        """The finished rung ``spec``: reused when its record matches, else built now."""
        recipe = self.recipe(spec)
        record_path = self.work / f"{spec.name}.json"
        file = f"{spec.name}.onnx"
        record = _read_record(record_path)
        if record and record["recipe"] == recipe and _size(self.folder / file) == record["bytes"]:
            self.log(f"[{index}/{count}] {spec.name}: already built ({record['accuracy']:.2%}), kept as it is")
            return _rung(spec, record)
        self.log(f"[{index}/{count}] {spec.name}: {self.describe(spec)}")
        untuned = self.export(spec)
        tuned = self.tune(untuned, self.folder / file)
        result = evaluate_file(self.folder / file, self.data("test"), spec=self.spec, split="test",
                               progress=self.progress)
        record = {"recipe": recipe, "accuracy": result.top1, "bytes": (self.folder / file).stat().st_size,
                  "tune": tuned}
        with atomic_output(record_path) as tmp:  # last: a record means the rung is finished
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        self.log(f"[{index}/{count}] {spec.name}: test accuracy {result.top1:.2%}, {record['bytes'] / 1024:.1f} KB")
        return _rung(spec, record)

    def recipe(self, spec: RungSpec) -> dict[str, Any]:
        """What decides the rung's file: a rung built with another recipe is rebuilt."""
        return {**self.training(spec), "int8": {"calibration": self.config.calibration} if spec.int8 else None,
                "threads": self.config.threads}

    def training(self, spec: RungSpec) -> dict[str, Any]:
        """What decides the fine-tuned checkpoint of ``spec`` (shared by its fp32 and int8 rungs)."""
        base = spec.base
        trained = (base != "dense" or spec.vip) and self.config.epochs > 0
        return {
            "method": "dense" if base == "dense" else "lean" if base == "lean" else "psconv",
            "pattern": None if base in ("dense", "lean") else base,
            "stencil": "5point" if base == "lean" else None,
            "virtual_pool": list(self.config.virtual_pool) if spec.vip else None,
            "source": self.model_path.name, "source_sha256": self.source_sha256, "data": self.spec,
            "finetune": {"epochs": self.config.epochs, "limit": self.config.limit, "lr": self.config.lr,
                         "seed": self.config.seed, "distill_from": self.model_path.name} if trained else None,
        }

    def describe(self, spec: RungSpec) -> str:
        steps = [] if spec.base == "dense" else [f"convert ({'lean 5point' if spec.base == 'lean' else spec.base})"]
        if spec.vip:
            steps.append(f"virtual-pool ({', '.join(self.config.virtual_pool)})")
        if spec.model != "dense" and self.config.epochs > 0:
            images = f"{self.config.limit:,}" if self.config.limit else "all"
            steps.append(f"fine-tune {self.config.epochs} epoch(s) on {images} training images, distilled from dense")
        steps += ["export"] + (["quantize to int8"] if spec.int8 else []) + ([] if spec.base == "dense" else ["tune"])
        steps.append("evaluate")
        return ", ".join(steps)

    def checkpoint(self, spec: RungSpec) -> LoadedModel:
        """The converted, fine-tuned model of ``spec``; reused (or its fine-tuning resumed) when the
        checkpoint in build/ was made with the same recipe."""
        if spec.model == "dense":
            return self.dense
        path = self.work / f"{spec.model}.pt"
        recipe = self.training(spec)
        saved = load_model(path) if path.is_file() else None
        if saved is not None and saved.meta.get("ladder_recipe") == recipe:
            done = (saved.meta.get("finetune") or {}).get("epochs_done", 0)
            if done >= self.config.epochs:
                return saved
            if state_path(path).is_file():
                return self.finetune(self.converted(spec, recipe), path, resume=True)
        model = self.converted(spec, recipe)
        return self.finetune(model, path, resume=False) if self.config.epochs > 0 else self.save(model, path)

    def converted(self, spec: RungSpec, recipe: dict[str, Any]) -> LoadedModel:
        model = LoadedModel(copy.deepcopy(self.dense.module), self.dense.arch, dict(self.dense.arch_kwargs),
                            copy.deepcopy(self.dense.meta))
        if spec.base == "lean":
            leanify(model.module, "5point", input_shape=self.shape)
        elif spec.base != "dense":
            sparsify(model.module, SparsifyConfig(spec.base), input_shape=self.shape)
        if spec.vip:
            self.virtual_pool(model)
        if "accuracy" in model.meta:  # the measured accuracy was the dense weights'
            model.meta["dense_accuracy"] = model.meta.pop("accuracy")
        model.meta.update({"input_shape": list(self.shape), "ladder_recipe": recipe})
        return model

    def virtual_pool(self, model: LoadedModel) -> None:
        """Virtual Pooling of ``model``'s layers named by the config's globs, or chosen (auto) on this data."""
        layers = self.config.virtual_pool
        budget = parse_auto(layers)
        if budget is not None:
            preprocess = self.dense.meta.get("preprocess")
            train, test = (model_inputs(self.data(split), preprocess) for split in ("train", "test"))
            layers = choose_layers(self.dense.module, model.module, self.shape, train, test, budget,
                                   log=lambda line: self.log(f"    {line}"), progress=self.progress)
            model.meta["virtual_pool_layers"] = list(layers)
        if layers:
            virtual_pool(model.module, layers, self.shape)

    def finetune(self, model: LoadedModel, path: Path, resume: bool) -> LoadedModel:
        config = FinetuneConfig(epochs=self.config.epochs, lr=self.config.lr, limit=self.config.limit,
                                seed=self.config.seed)
        teacher = copy.deepcopy(self.dense.module)
        finetune(model, self.data("train"), self.data("test"), path, config, teacher=teacher, resume=resume,
                 log=lambda line: self.log(f"    {line}"))
        return model

    @staticmethod
    def save(model: LoadedModel, path: Path) -> LoadedModel:
        save_checkpoint(model, path)
        return model

    def export(self, spec: RungSpec) -> Path:
        """The rung's untuned ONNX file in build/: the fp32 export, quantized for an int8 rung."""
        fp32 = self.work / f"{spec.model}.onnx"
        export_onnx(self.checkpoint(spec), fp32, dense=spec.base == "dense")  # seconds: not worth a cache
        if not spec.int8:
            return fp32
        int8 = self.work / f"{spec.name}.onnx"
        quantize_file(fp32, self.spec, int8, calibration=self.config.calibration, progress=self.progress)
        return int8

    def tune(self, untuned: Path, target: Path) -> dict[str, Any] | None:
        """Write ``target``: ``untuned`` tuned for this CPU at batch 1 (as it is when it has no PSConv node).
        Returns the plan's summary for the recipe."""
        if not any(is_psconv(node) for node in read_onnx(untuned).nodes):
            with atomic_output(target) as tmp:
                tmp.write_bytes(untuned.read_bytes())
            return None
        data, plan = tune_model(untuned, batch=1, threads=self.config.threads, progress=self.progress)
        with atomic_output(target) as tmp:
            tmp.write_bytes(data)
        dense = sum(node["choice"] == "dense" for node in plan["nodes"])
        return {"plan": plan["plan"], "dense_layers": dense, "layers": len(plan["nodes"]), "isa": plan["isa"]}


def _rung(spec: RungSpec, record: dict[str, Any]) -> Rung:
    """The rung of a finished record; its latency is measured once every rung is built."""
    return Rung(name=spec.name, file=f"{spec.name}.onnx", accuracy=record["accuracy"], bytes=record["bytes"],
                latency_ms={"p50": 0.0, "p90": 0.0, "p99": 0.0}, recipe={**record["recipe"], "tune": record["tune"]})


def _read_record(path: Path) -> dict[str, Any] | None:
    """A finished rung's record, or None when there is none or it is not one this build wrote."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and {"recipe", "accuracy", "bytes"} <= record.keys()
    return record if ok else None


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None

