"""torch.export programs (``.pt2``) as models pscompress converts, fine-tunes and exports.

A ``.pt2`` file (``torch.export.save``) is a zip archive: a JSON graph, raw weight files and a
few JSON configs. ``torch.export.load`` would also unpickle what the archive marks as pickled
and evaluate the graph's symbolic sizes as Python expressions, so ``check_program_archive``
refuses, before it runs, any archive with a pickled payload, a member it does not know or a
size expression that is more than arithmetic; ``load_program`` then refuses a graph that calls
anything but torch operators and ``operator`` functions.

``program_module`` turns the program into an fx GraphModule the rest of pscompress converts
like any model: each 2-D convolution with constant weights becomes a call of an ``nn.Conv2d``
submodule, each inference-mode batch norm one of an ``nn.BatchNorm2d`` and each linear layer one
of an ``nn.Linear`` (same tensors, checked
numerically against the program), and the aten add and ReLU become the Python ones the exporter
fuses. What it cannot rewrite stays a dense aten call, with a note. The rewrite is a pure
function of the program, so a checkpoint stores the program's bytes and the state dict, and
loading it rebuilds the same modules (pscompress.workstation.checkpoint).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import operator
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import fx, nn

from pscompress.core.errors import UserError, short_repr
from pscompress.core.inputs import check_zip
from pscompress.core.limits import check_input_shape

aten = torch.ops.aten

# Members torch.export.save writes (below the archive's one top folder); anything else (compiled
# AOTInductor code, legacy pickled weights) is refused.
_KNOWN_MEMBERS = re.compile(
    r"(archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|extra/[^/]+|data/sample_inputs/[\w.-]+\.pt"
    r"|data/weights/(weight_\d+|[\w.-]+_weights_config\.json)"
    r"|data/constants/(tensor_\d+|[\w.-]+_constants_config\.json))")
# The names a symbolic size expression may use: sizes (s0, u1, ...) and sympy's arithmetic.
_SYMBOL = re.compile(r"[a-z]{1,3}\d+")
_SIZE_FUNCTIONS = frozenset({
    "Add", "Mul", "Float", "Mod", "PythonMod", "FloorDiv", "CleanDiv", "CeilDiv", "IntTrueDiv", "FloatTrueDiv", "TruncToInt",
    "RoundToInt", "Max", "Min", "Abs", "Pow", "PowByNatural", "Integer", "Rational", "Eq", "Ne", "Ge", "Gt",
    "Le", "Lt", "And", "Or", "Not", "True", "False", "oo", "floor", "ceiling", "ModularIndexing", "Identity",
    "ToFloat", "Symbol", "positive", "nonnegative", "integer", "real", "finite"})
_QUOTED_SYMBOL = re.compile(r"'[a-z]{1,3}\d+'")  # Symbol('s0', positive=True, integer=True): the one string allowed
_EXPRESSION = re.compile(r"[\w\s+\-*/%(),.<>=!]*")
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")

_CONVOLUTIONS = (aten.conv2d.default, aten.conv2d.padding, aten.convolution.default)
_OTHER_CONVOLUTIONS = {aten.conv1d.default: "a 1-D convolution", aten.conv1d.padding: "a 1-D convolution",
                       aten.conv3d.default: "a 3-D convolution", aten.conv3d.padding: "a 3-D convolution",
                       aten.conv_transpose1d.default: "a transposed convolution",
                       aten.conv_transpose2d.input: "a transposed convolution",
                       aten.conv_transpose3d.input: "a transposed convolution"}
# The aten ops whose Python forms exporters.fuse recognises around a pSConv layer.
_PYTHON_FORMS = {aten.add.Tensor: operator.add, aten.relu.default: torch.relu}


@dataclass
class ProgramModel:
    """A program rewritten for pscompress: the module, the input it was exported for, and what stays dense."""

    module: fx.GraphModule
    input_shape: tuple[int, int, int] | None
    notes: list[str] = field(default_factory=list)


def is_program_archive(source: Any) -> bool:
    """Whether ``source`` (a path or binary file) is a zip archive torch.export.save wrote."""
    try:
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(name.endswith("/archive_format") for name in names) and any("/models/" in name for name in names)


def check_program_archive(source: Any, what: str) -> None:
    """Refuse an archive torch.export.load would unpickle or evaluate code from; its sizes are checked first."""
    check_zip(source, what)
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            name = info.filename.partition("/")[2]
            if not info.is_dir() and not _KNOWN_MEMBERS.fullmatch(name):
                raise UserError(f"{what}: the archive holds {info.filename}, which a torch.export program does not: "
                                "pscompress reads programs saved by torch.export.save only")
            if name.endswith("_config.json"):
                _check_payload_config(_read_json(archive, info.filename, what), what)
            elif name.startswith("models/"):
                _check_expressions(_read_json(archive, info.filename, what), what)
            elif name.startswith("data/sample_inputs/"):
                _check_tensors_only(archive.read(info.filename), f"{what}: {info.filename}")


def _read_json(archive: zipfile.ZipFile, member: str, what: str) -> Any:
    try:
        return json.loads(archive.read(member))
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{what}: {member} is damaged ({exc.__class__.__name__})") from exc


def _check_payload_config(config: Any, what: str) -> None:
    """Weights and constants must be raw tensor data: torch.export.load unpickles the others without checks."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise UserError(f"{what}: a weights or constants config of the archive is malformed")
    for name, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False \
                or not re.fullmatch(r"(weight|tensor)_\d+", str(entry.get("path_name"))):
            raise UserError(f"{what}: {short_repr(name)} is stored as a pickled Python object, which can run code when "
                            "loaded: pscompress reads programs whose weights and constants are plain tensors")


def _check_expressions(model: Any, what: str) -> None:
    """Every symbolic size (``expr_str``) must be arithmetic: torch.export.load evaluates it with sympy."""
    for text in _values_of(model, "expr_str"):
        bare = _QUOTED_SYMBOL.sub("s0", text) if isinstance(text, str) else ""
        names = _IDENTIFIER.findall(bare) if isinstance(text, str) else [None]
        if not isinstance(text, str) or not _EXPRESSION.fullmatch(bare) \
                or not all(n in _SIZE_FUNCTIONS or _SYMBOL.fullmatch(n) for n in names):
            raise UserError(f"{what}: the graph holds a size expression that is not arithmetic ({short_repr(text)}): "
                            "refusing to evaluate it")


def _values_of(tree: Any, key: str) -> Iterator[Any]:
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if key in item:
                yield item[key]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_tensors_only(data: bytes, what: str) -> None:
    """torch.export.load retries a failed weights_only load of the example inputs with full unpickling."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses objects; damaged bytes fail in many ways
        raise UserError(f"{what} holds more than tensors (pickled Python objects?): refusing to load it") from exc


def _reason(exc: BaseException, limit: int = 160) -> str:
    """An exception's first line, bounded, for the one-line message that quotes it."""
    text = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_program(source: Any, what: str) -> torch.export.ExportedProgram:
    """The program in ``source`` (a path or binary file), checked before and after torch.export.load."""
    check_program_archive(source, what)
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        with _quiet():
            program = torch.export.load(source)
    except Exception as exc:  # the deserializer fails in many ways on a damaged or newer archive
        raise UserError(f"{what} is not a torch.export program this PyTorch ({torch.__version__}) reads "
                        f"({exc.__class__.__name__}: {_reason(exc)})") from exc
    _check_targets(program.graph, what)
    return program


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export.load logs a warning and a traceback before it raises on a bad archive."""
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export", "torch.export.pt2_archive")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _check_targets(graph: fx.Graph, what: str) -> None:
    """The deserializer resolves any ``torch.*`` name as a node's function: only operators may run."""
    for node in graph.nodes:
        if node.op == "call_function" and not _is_operator(node.target):
            raise UserError(f"{what}: node {node.name} calls {short_repr(str(node.target))}, which is not a torch operator: "
                            "refusing to run it")
        if node.op in ("call_method", "call_module"):
            raise UserError(f"{what}: node {node.name} is a {node.op}, which a torch.export program does not hold")


def _is_operator(target: Any) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return True
    return callable(target) and getattr(target, "__module__", None) in ("_operator", "operator", "math")


def program_module(program: torch.export.ExportedProgram, what: str) -> ProgramModel:
    """``program`` as a GraphModule with nn.Conv2d / nn.BatchNorm2d submodules, checked against the program."""
    shape = program_input_shape(program, what)
    try:
        root = program.module()
    except Exception as exc:  # unlifting a damaged or unusual program
        raise UserError(f"{what}: cannot rebuild a module from the program ({_reason(exc)})") from exc
    graph = root.graph
    _drop_guards(graph)
    notes = [*_rewrite_convolutions(root, graph), *_rewrite_batch_norms(root, graph, what)]
    _rewrite_linears(root, graph)
    _use_python_forms(graph)
    graph.eliminate_dead_code()
    graph.lint()
    module = fx.GraphModule(root, graph, "ExportedProgram").eval()  # a fresh one: without the program's input guards
    if shape is not None:
        _check_same(program, module, shape, what)
    return ProgramModel(module, shape, notes)


def program_input_shape(program: torch.export.ExportedProgram, what: str) -> tuple[int, int, int] | None:
    """(C, H, W) of the program's one image input, from its example input signature (None: symbolic)."""
    inputs = [node for node in program.graph.nodes
              if node.op == "placeholder" and node.name in program.graph_signature.user_inputs]
    values = [node.meta.get("val") for node in inputs]
    if len(values) != 1 or not isinstance(values[0], torch.Tensor) or values[0].dim() != 4:
        shapes = ", ".join(str(list(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__ for v in values)
        raise UserError(f"{what}: the program takes {len(values)} input(s) ({shapes or 'none'}); pscompress converts "
                        "models of one image input [N, C, H, W]")
    dims = values[0].shape[1:]
    if not all(isinstance(d, int) for d in dims):  # exported with a dynamic H or W: the example saved with it
        example = torch.utils._pytree.tree_leaves(program.example_inputs or ())
        if len(example) != 1 or not isinstance(example[0], torch.Tensor) or example[0].dim() != 4:
            return None
        dims = example[0].shape[1:]
    return check_input_shape([int(d) for d in dims], f"{what}: the program's input")


def _drop_guards(graph: fx.Graph) -> None:
    """ExportedProgram.module() checks each call against the example's sizes; pscompress runs other batches."""
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)


def _schema_arguments(node: fx.Node) -> dict[str, Any]:
    """A call's arguments by the operator's schema names, defaults filled in."""
    values = {}
    for index, argument in enumerate(node.target._schema.arguments):
        if index < len(node.args):
            values[argument.name] = node.args[index]
        elif argument.name in node.kwargs:
            values[argument.name] = node.kwargs[argument.name]
        else:
            values[argument.name] = argument.default_value if argument.has_default_value() else None
    return values


def _constant(root: nn.Module, value: Any, users: int | None = None) -> torch.Tensor | None:
    """The tensor a get_attr node reads, when only the node's expected users read it; None otherwise."""
    if not (isinstance(value, fx.Node) and value.op == "get_attr"):
        return None
    if users is not None and len(value.users) != users:
        return None
    tensor = _attribute(root, value.target)
    return tensor if isinstance(tensor, torch.Tensor) else None


def _attribute(root: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name, None)


def _rewrite_convolutions(root: nn.Module, graph: fx.Graph) -> list[str]:
    notes = []
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _OTHER_CONVOLUTIONS:
            notes.append(f"node {node.name} stays as it is: {_OTHER_CONVOLUTIONS[node.target]}, not a 2-D one")
        elif node.target in _CONVOLUTIONS:
            reason = _replace_convolution(root, graph, node)
            if reason:
                notes.append(f"convolution {node.name} stays dense: {reason}")
    return notes


def _replace_convolution(root: nn.Module, graph: fx.Graph, node: fx.Node) -> str | None:
    """Put an nn.Conv2d call in place of one aten convolution; the reason when it cannot."""
    args = _schema_arguments(node)
    if args.get("transposed"):
        return "it is a transposed convolution"
    if any(args.get("output_padding") or []):
        return "it has an output padding"
    weight, weight_targets = _masked_weight(root, args["weight"])
    bias = None if args["bias"] is None else _constant(root, args["bias"], users=1)
    if weight is None or (args["bias"] is not None and bias is None):
        return "its weight or bias is computed in the graph or shared, not a constant of its own"
    if weight.dim() != 4:
        return f"its weight has {weight.dim()} dimensions, not 4"
    padding = _conv_padding(args["padding"], weight.shape[2:], _pair(args["dilation"]))
    if padding is None:
        return f"padding {args['padding']!r} is uneven"
    groups = int(args["groups"])
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=_pair(args["stride"]),
                     padding=padding, dilation=_pair(args["dilation"]), groups=groups, bias=bias is not None)
    conv.weight = _parameter(weight)
    if bias is not None:
        conv.bias = _parameter(bias)
    targets = weight_targets + ([args["bias"].target] if bias is not None else [])
    _call_instead(root, graph, node, conv, targets, args["input"])
    if args["weight"].op == "call_function":  # the product and its mask: the new module holds no mask to read
        factors = list(args["weight"].args)
        graph.erase_node(args["weight"])
        for factor in factors:
            graph.erase_node(factor)
    return None


def _masked_weight(root: nn.Module, value: Any) -> tuple[torch.Tensor | None, list[str]]:
    """A convolution's weight and the attributes it comes from: a constant of its own, or the product of two
    (a pSConv layer's weight times its mask, as PSConv2d and other masked convs compute it in forward), folded
    into one tensor whose zeros convert then recognises. (None, []) for anything else."""
    weight = _constant(root, value, users=1)
    if weight is not None:
        return weight, [value.target]
    if not (isinstance(value, fx.Node) and value.op == "call_function" and value.target is aten.mul.Tensor
            and len(value.users) == 1 and len(value.args) == 2 and not value.kwargs):
        return None, []
    factors = [_constant(root, arg, users=1) for arg in value.args]
    if any(f is None for f in factors) or factors[0].dim() != 4 or factors[1].shape != factors[0].shape:
        return None, []
    with torch.no_grad():
        weight = (factors[0] * factors[1]).to(factors[0].dtype)
    return weight, [arg.target for arg in value.args]


def _pair(value: Any) -> tuple[int, int]:
    values = [int(v) for v in value]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _conv_padding(padding: Any, kernel: Any, dilation: tuple[int, int]) -> tuple[int, int] | None:
    """Symmetric padding as two integers ('valid' and 'same' included); None for uneven 'same'."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        totals = [d * (int(k) - 1) for d, k in zip(dilation, kernel)]
        return None if any(t % 2 for t in totals) else (totals[0] // 2, totals[1] // 2)
    return _pair(padding)


def _parameter(tensor: torch.Tensor) -> nn.Parameter:
    """The program's parameter itself (a buffer becomes one: fine-tuning trains it)."""
    return tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor.detach().clone())


def _rewrite_linears(root: nn.Module, graph: fx.Graph) -> None:
    """aten.linear on constants -> nn.Linear, so the report counts the classifier as a layer (others stay as they are)."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.linear.default:
            continue
        args = _schema_arguments(node)
        weight = _constant(root, args["weight"], users=1)
        bias = None if args["bias"] is None else _constant(root, args["bias"], users=1)
        if weight is None or weight.dim() != 2 or (args["bias"] is not None and bias is None):
            continue
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        linear.weight = _parameter(weight)
        if bias is not None:
            linear.bias = _parameter(bias)
        _call_instead(root, graph, node, linear, [args[n].target for n in ("weight", "bias") if args[n] is not None],
                      args["input"])


def _rewrite_batch_norms(root: nn.Module, graph: fx.Graph, what: str) -> list[str]:
    notes = []
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in (aten.batch_norm.default,
                                                          aten._native_batch_norm_legit_no_training.default):
            reason = _replace_batch_norm(root, graph, node, what)
            if reason:
                notes.append(f"batch norm {node.name} stays as it is: {reason}")
    return notes


def _replace_batch_norm(root: nn.Module, graph: fx.Graph, node: fx.Node, what: str) -> str | None:
    """Put an nn.BatchNorm2d call in place of an inference-mode aten batch norm; the reason when it cannot."""
    args = _schema_arguments(node)
    if args.get("training"):  # its output depends on the batch: no export of it can match
        raise UserError(f"{what}: batch norm {node.name} normalises with batch statistics: the program was exported "
                        "in training mode; export it from model.eval()")
    value = args["input"].meta.get("val") if isinstance(args["input"], fx.Node) else None
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        return "its input is not an image batch [N, C, H, W]"
    tupled = node.target is aten._native_batch_norm_legit_no_training.default
    if tupled and not all(user.target is operator.getitem and user.args[1] == 0 for user in node.users):
        return "its saved statistics are used"
    stats = [_constant(root, args[name], users=1) for name in ("running_mean", "running_var")]
    affine = [None if args[name] is None else _constant(root, args[name], users=1) for name in ("weight", "bias")]
    if any(s is None for s in stats) or any(a is None and args[n] is not None for a, n in zip(affine, ("weight", "bias"))):
        return "its statistics or affine parameters are computed in the graph or shared"
    momentum = None if args["momentum"] is None else float(args["momentum"])  # None: a cumulative average
    bn = nn.BatchNorm2d(stats[0].numel(), eps=float(args["eps"]), momentum=momentum, affine=affine[0] is not None)
    bn.running_mean, bn.running_var = stats[0], stats[1]
    if affine[0] is not None:
        bn.weight, bn.bias = _parameter(affine[0]), _parameter(affine[1])
    owner = args["running_mean"].target.rpartition(".")[0]
    tracked = _attribute(root, f"{owner}.num_batches_tracked") if owner else None
    if isinstance(tracked, torch.Tensor):
        bn.num_batches_tracked = tracked
    targets = [args[n].target for n in ("running_mean", "running_var", "weight", "bias") if args[n] is not None]
    replaced = list(node.users) if tupled else [node]
    _call_instead(root, graph, node, bn, targets + ([f"{owner}.num_batches_tracked"] if tracked is not None else []),
                  args["input"], replaced)
    return None


def _call_instead(root: nn.Module, graph: fx.Graph, node: fx.Node, module: nn.Module, targets: list[str],
                  source: fx.Node, replaced: list[fx.Node] | None = None) -> None:
    """Register ``module`` under the name of the layer that held ``targets`` and call it in place of ``node``."""
    name = _module_name(root, targets)
    root.add_submodule(name, module)
    with graph.inserting_before(node):
        call = graph.call_module(name, (source,))
    call.meta = dict(node.meta)
    for old in replaced or [node]:
        old.replace_all_uses_with(call)
        if old is not node:
            graph.erase_node(old)
    graph.erase_node(node)


def _module_name(root: nn.Module, targets: list[str]) -> str:
    """The layer's own name ("layer1.0.conv1") when its tensors were all that module held; else a new one beside them."""
    owner = targets[0].rpartition(".")[0]
    module = root.get_submodule(owner) if owner else root
    held = {f"{owner}.{name}" if owner else name for name, _ in [*module.named_parameters(recurse=False),
                                                                  *module.named_buffers(recurse=False)]}
    if owner and not list(module.children()) and held <= set(targets) and type(module) is nn.Module:
        return owner
    base = targets[0].replace(".", "_") + "_layer"
    name, index = base, 1
    while hasattr(root, name):
        name, index = f"{base}{index}", index + 1
    return name


def _use_python_forms(graph: fx.Graph) -> None:
    """aten add / relu -> operator.add / torch.relu, the forms exporters.fuse fuses into a pSConv node."""
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _PYTHON_FORMS and not node.kwargs \
                and len(node.args) == (2 if node.target is aten.add.Tensor else 1):
            node.target = _PYTHON_FORMS[node.target]


def _check_same(program: torch.export.ExportedProgram, module: nn.Module, shape: tuple[int, int, int], what: str) -> None:
    """The rewritten module computes what the program does, on the example's batch and on another batch size."""
    batch = program_batch(program)
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
    expected = _leaves(program.module(), x, f"{what}: the program does not run on a random batch of its example's "
                                            "shape")
    got = _leaves(module, x, f"{what}: the program's layers, rewritten, do not run (please report this)")
    # A size baked into the graph (a view to [1, 512], say) fails here, not later in fine-tuning or export.
    _leaves(module, torch.rand(batch + 1, *shape),
            f"{what}: the program does not run on a batch of {batch + 1} images", "export it with a dynamic batch "
            "dimension (torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},)))")
    for a, b in zip(got, expected):
        scale = max(float(b.abs().max()) if b.numel() else 0.0, 1.0)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-5, atol=1e-6 * scale):
            raise UserError(f"{what}: rewriting the program's layers changed what it computes: please report this")


def _leaves(module: nn.Module, x: torch.Tensor, failure: str, advice: str = "") -> list[torch.Tensor]:
    """``module``'s outputs on ``x``, flattened; a UserError saying ``failure`` (why, then ``advice``) if it fails."""
    try:
        with torch.no_grad(), _quiet():
            return torch.utils._pytree.tree_leaves(module(x))
    except Exception as exc:  # an arbitrary graph fails in arbitrary ways
        raise UserError(f"{failure} ({_reason(exc)})" + (f": {advice}" if advice else "")) from exc


def program_batch(program: torch.export.ExportedProgram) -> int:
    """The batch size the program was exported for (1 when it is symbolic: any works)."""
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs)
    size = node.meta["val"].shape[0]
    return int(size) if isinstance(size, int) else 1

