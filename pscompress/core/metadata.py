"""The metadata pscompress records with a model: one schema for checkpoints, ONNX and TFLite.

Fields (all optional; readers pass what they decoded through ``check_metadata`` so the rest of
the code can trust them):

- ``schema``: the version of this schema (``SCHEMA``); ``version``: the pscompress version
  that wrote the file.
- ``input_shape`` [C, H, W]; ``dynamic_hw`` (ONNX, true when the graph's H and W are symbolic,
  ``export --dynamic-hw``: the model runs at any image size, ``input_shape`` is the default one);
  ``input_layout`` ("NCHW" or "NHWC", the exported graph's);
  ``classes`` (names); ``accuracy``, ``dense_accuracy`` (fractions); ``agreement`` (a fraction: a
  per-pixel model's top-1 agreement with the teacher it was fine-tuned from, on the test images,
  where a classifier records ``accuracy``); ``arch``.
- ``pattern`` (the layers' pattern families, "4of9", at most ``MAX_PATTERN_TEXT`` characters:
  ``pattern_text``, ``patterns_text``); ``operator`` (ONNX: the custom operator
  set); ``fp16``, ``psconv_layers`` (TFLite: per layer, its kernel size, patterns and shift);
  ``meta`` (TFLite: the checkpoint's own metadata); ``finetune``, ``conversion``, ``sparsify``
  (checkpoints: how the model was made; ``sparsify`` is the whole SparsifyConfig).
- ``preprocess``: what turns an image file into the tensor the model takes, all keys optional
  (absent: the identity, as in files written before it existed): ``mean`` and ``std`` (one
  finite number per input channel, in the model's channel order, on the [0, 1] pixel scale;
  std > 0), ``channel_order`` ("rgb" or "bgr": the order of a 3-channel model's input channels),
  ``resize`` (an integer N: scale an image so its shorter side is N pixels, then crop its centre
  to the model's H x W; absent: stretch it to H x W). The graph takes (x - mean) / std of images
  x in [0, 1]; pscompress's predictors apply mean and std themselves (``PREPROCESS_KEYS``). A key
  this version does not know is refused rather than silently skipped.
- ``outputs`` (ONNX, TFLite): the model's outputs in order, each ``{"name", "shape"}`` with the shape
  of one image's output (no batch dimension); absent in older files, which have one
  output, ``logits``.
- ``tune`` (ONNX, written by ``pscompress tune``): the plan the file runs and how it was measured:
  ``plan`` ("per-node", "native" or "dense": every PSConv node native or dense), ``fallback``
  (the per-node choices were slower as a whole model), ``batch``, ``threads`` (null: onnxruntime's
  default), ``cpu`` (model name), ``isa`` (pscompress.runtime.cpu_path()), ``onnxruntime``,
  ``pscompress`` (versions), ``clock``, ``date`` (ISO 8601, UTC), ``model_ms`` (whole-model
  time per variant timed: median CPU time or lower-quartile wall time), ``confirm_ms`` (the
  second timing of the variant chosen against every node dense, or null), ``nodes`` (per PSConv
  node: ``name``, ``op``, ``native_ms``, ``dense_ms``, ``choice``: "native" or "dense", how the
  file runs it).

ONNX stores each field as a ``pscompress.<field>`` metadata property holding JSON; TFLite as one
JSON object in the ``pscompress`` Model.metadata entry.

- ``quantization`` (ONNX, written by ``pscompress quantize``): ``format`` ("QDQ"), ``activations``,
  ``weights``, ``bias``, ``calibration_method`` (texts), ``calibration_data`` (the data spec) and
  ``calibration_images``. An int8 file carries no ``accuracy`` (that was the fp32 file's) and no
  ``tune`` plan of the fp32 file. torch-free and numpy-free.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

from pscompress.core.errors import UserError, short_repr
from pscompress.core.limits import MAX_CHANNELS, MAX_CLASSES, check_input_shape, is_int

SCHEMA = 1
ONNX_PREFIX = "pscompress."
TFLITE_ENTRY = "pscompress"  # the Model.metadata entry name
_FRACTIONS = ("accuracy", "dense_accuracy", "agreement")
_MAPPINGS = ("finetune", "conversion", "sparsify", "tune", "quantization")  # the records finetune, convert, tune, quantize write
# A pattern's name in metadata and `info`: a family ("4of9") or explicit supports such as
# "0,1,3,4/4,5,7,8" (8 characters a 4-position support, so about ten of them, or the papers'
# period 8 with one dense kernel); beyond this many characters the text gives the period and density.
MAX_PATTERN_TEXT = 80
MAX_OUTPUTS = 256  # outputs of one model
MAX_OUTPUT_RANK = 8
PREPROCESS_KEYS = ("mean", "std", "channel_order", "resize")
CHANNEL_ORDERS = ("rgb", "bgr")
MAX_RESIZE = 1 << 16  # pixels of the shorter side; the resized image must also fit the image pixel limit


def export_metadata(source_meta: Mapping[str, Any], arch: str | None, input_shape: list[int] | tuple[int, ...],
                    **fields: Any) -> dict[str, Any]:
    """The fields every export records, from the checkpoint's metadata, plus format-specific ``fields``."""
    from pscompress import __version__

    meta: dict[str, Any] = {"schema": SCHEMA, "version": __version__, "input_shape": list(input_shape)}
    if source_meta.get("classes"):
        meta["classes"] = [str(c) for c in source_meta["classes"]]
    for measured in ("accuracy", "agreement"):
        if source_meta.get(measured) is not None:
            meta[measured] = float(source_meta[measured])
    if source_meta.get("preprocess"):
        meta["preprocess"] = dict(source_meta["preprocess"])
    if arch:
        meta["arch"] = arch
    meta.update(fields)
    return meta


def pattern_text(name: str, period: int, density: float) -> str:
    """How metadata and ``info`` show one layer's pattern: ``name`` when it is short, else its period and density."""
    return name if len(name) <= MAX_PATTERN_TEXT else f"period {period}, density {density:.3f}"


def patterns_text(names: list[str]) -> str:
    """Pattern names joined with "; ", at most ``MAX_PATTERN_TEXT`` characters: the first ones and how many more."""
    shown: list[str] = []
    for index, name in enumerate(names):
        rest = len(names) - index - 1
        more = f"; and {rest} more" if rest else ""
        if len("; ".join([*shown, name])) + len(more) > MAX_PATTERN_TEXT:
            if not shown:
                return f"{len(names)} pattern(s), too long to show"
            return "; ".join(shown) + f"; and {len(names) - len(shown)} more"
        shown.append(name)
    return "; ".join(shown)


def encode_onnx_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """``meta`` as ONNX metadata properties: prefixed keys, JSON values (plain strings stay as they are)."""
    return {ONNX_PREFIX + key: value if isinstance(value, str) else json.dumps(value)
            for key, value in meta.items() if value is not None}


def encode_tflite_metadata(meta: Mapping[str, Any]) -> bytes:
    """``meta`` as the JSON stored in a .tflite file's ``pscompress`` metadata buffer."""
    return json.dumps(dict(meta), default=str, sort_keys=True).encode()


def decode_tflite_metadata(raw: bytes | None, source: str) -> dict[str, Any]:
    """The metadata from a .tflite file's ``pscompress`` buffer (None: the file has none), validated."""
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as exc:  # bad JSON or UTF-8
        raise UserError(f"{source}: its pscompress metadata is damaged ({exc.__class__.__name__})") from exc
    if isinstance(meta, dict) and "schema" not in meta and is_int(meta.get("version")):
        meta["schema"] = meta.pop("version")  # pscompress 0.1 wrote the schema version as "version"
    return check_metadata(meta, source)


def check_metadata(meta: Any, source: str) -> dict[str, Any]:
    """``meta`` with its known fields validated (input_shape normalised to a list of ints)."""
    if not isinstance(meta, Mapping):
        raise UserError(f"{source}: the metadata is a {type(meta).__name__}, not a mapping of names to values")
    meta = dict(meta)
    if meta.get("input_shape") is not None:
        meta["input_shape"] = list(check_input_shape(meta["input_shape"], f"{source}: input_shape"))
    if meta.get("classes") is not None:
        meta["classes"] = _classes(meta["classes"], source)
    for key in _FRACTIONS:
        value = meta.get(key)
        if value is not None and not (_is_number(value) and 0 <= value <= 1):
            raise UserError(f"{source}: {key} must be a fraction in [0, 1], got {value!r}")
    if meta.get("dynamic_hw") is not None and not isinstance(meta["dynamic_hw"], bool):
        raise UserError(f"{source}: dynamic_hw must be true or false, got {short_repr(meta['dynamic_hw'])}")
    for key in _MAPPINGS:
        if meta.get(key) is not None and not isinstance(meta[key], Mapping):
            raise UserError(f"{source}: {key} must be a mapping, got {type(meta[key]).__name__}")
    if meta.get("outputs") is not None:
        meta["outputs"] = _outputs(meta["outputs"], source)
    if meta.get("preprocess") is not None:
        meta["preprocess"] = check_preprocess(meta["preprocess"], meta.get("input_shape"), f"{source}: preprocess ")
    return meta


def check_preprocess(value: Any, input_shape: list[int] | tuple[int, ...] | None, prefix: str = "",
                     options: bool = False) -> dict[str, Any]:
    """The ``preprocess`` field validated against ``input_shape`` (when known); only the keys given are kept.

    Messages quote each key after ``prefix``; ``options``: the keys are command-line options
    (UserError parameters, so the CLI shows ``--channel-order``).
    """
    if not isinstance(value, Mapping):
        raise UserError(f"{prefix.strip() or 'preprocess'} must be a mapping of {', '.join(PREPROCESS_KEYS)}, "
                        f"got {short_repr(value)}")
    unknown = sorted(str(key) for key in value if key not in PREPROCESS_KEYS)
    if unknown:
        raise UserError(f"{prefix}has unknown step(s) {', '.join(unknown)} (written by a newer pscompress?); "
                        f"this one applies {', '.join(PREPROCESS_KEYS)}")

    def fail(key: str, message: str) -> UserError:
        return UserError(f"{prefix}`{key}` {message}", *((key,) if options else ()))

    channels = input_shape[0] if input_shape else None
    checked: dict[str, Any] = {}
    for key in ("mean", "std"):
        if value.get(key) is not None:
            checked[key] = _per_channel(value[key], channels, key == "std", lambda m, k=key: fail(k, m))
    if "mean" in checked and "std" in checked and len(checked["mean"]) != len(checked["std"]):
        raise fail("std", f"has {len(checked['std'])} value(s) and mean {len(checked['mean'])}: give one per channel")
    order = value.get("channel_order")
    if order is not None:
        if order not in CHANNEL_ORDERS:
            raise fail("channel_order", f"must be one of {', '.join(CHANNEL_ORDERS)}, got {short_repr(order)}")
        if order == "bgr" and channels not in (None, 3):
            raise fail("channel_order", f"bgr applies to 3-channel models, this one takes {channels} channel(s)")
        checked["channel_order"] = order
    if value.get("resize") is not None:
        checked["resize"] = _resize(value["resize"], input_shape, lambda m: fail("resize", m))
    return checked


def _per_channel(values: Any, channels: int | None, positive: bool, fail: Callable[[str], UserError]) -> list[float]:
    """One finite number per input channel (positive ones for std)."""
    if not isinstance(values, (list, tuple)) or not values or len(values) > MAX_CHANNELS \
            or not all(_is_number(v) and (v > 0 or not positive) for v in values):
        raise fail(f"must be {'positive ' if positive else ''}finite numbers, one per input channel, "
                   f"got {short_repr(values)}")
    if channels is not None and len(values) != channels:
        raise fail(f"has {len(values)} value(s), the model takes {channels} channel(s): give one per channel")
    return [float(v) for v in values]


def _resize(size: Any, input_shape: list[int] | tuple[int, ...] | None, fail: Callable[[str], UserError]) -> int:
    """The shorter side an image is scaled to before its centre is cropped: at least the model's H and W."""
    if not is_int(size) or not 1 <= size <= MAX_RESIZE:
        raise fail(f"must be an integer from 1 to {MAX_RESIZE} (the shorter side in pixels), got {short_repr(size)}")
    if input_shape and size < max(input_shape[1:]):
        raise fail(f"{size} is smaller than the model's {input_shape[1]}x{input_shape[2]} input: the centre crop "
                   "would not fit")
    return int(size)


def describe_preprocess(preprocess: Mapping[str, Any]) -> str:
    """One line saying what ``preprocess`` does to an image file, in the order it is applied (``info``)."""
    resize = preprocess.get("resize")
    steps = [f"shorter side to {resize}, centre crop" if resize else "stretch to the input size"]
    if "channel_order" in preprocess:
        steps.append(f"channels {preprocess['channel_order']}")
    steps.append("scale to [0, 1]")
    for key in ("mean", "std"):
        if key in preprocess:
            steps.append(f"{key} {', '.join(f'{v:g}' for v in preprocess[key])}")
    return "; ".join(steps)


def _outputs(outputs: Any, source: str) -> list[dict[str, Any]]:
    """The ``outputs`` field: a list of {"name": str, "shape": [int, ...]} (one image's shape)."""
    if not isinstance(outputs, (list, tuple)) or not 1 <= len(outputs) <= MAX_OUTPUTS:
        raise UserError(f"{source}: outputs must be a list of 1 to {MAX_OUTPUTS} outputs, got {short_repr(outputs)}")
    checked = []
    for entry in outputs:
        name = entry.get("name") if isinstance(entry, Mapping) else None
        shape = entry.get("shape") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not 1 <= len(name) <= 256 or not isinstance(shape, (list, tuple)) \
                or len(shape) > MAX_OUTPUT_RANK or not all(is_int(d) and 0 <= d < 2 ** 31 for d in shape):
            raise UserError(f"{source}: each output must be {{\"name\": text, \"shape\": [up to {MAX_OUTPUT_RANK} sizes]}}, "
                            f"got {short_repr(entry)}")
        checked.append({"name": name, "shape": [int(d) for d in shape]})
    return checked


def decode_onnx_metadata(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """An ONNX model's pscompress metadata: prefix stripped, JSON values (lists, numbers) decoded, validated."""
    meta: dict[str, Any] = {}
    for key, value in props.items():
        if not key.startswith(ONNX_PREFIX):
            continue
        try:
            meta[key[len(ONNX_PREFIX):]] = json.loads(value)
        except ValueError:
            meta[key[len(ONNX_PREFIX):]] = value
    return check_metadata(meta, source)


def _classes(classes: Any, source: str) -> list[str]:
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) or is_int(c) for c in classes):
        raise UserError(f"{source}: classes must be a list of class names, got {short_repr(classes)}")
    if len(classes) > MAX_CLASSES:
        raise UserError(f"{source}: {len(classes):,} classes, more than the {MAX_CLASSES:,} allowed")
    return [str(c) for c in classes]


def _is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)
