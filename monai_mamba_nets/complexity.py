"""Parameters and MACs of a network three ways: true, as the papers' ``thop`` saw the reference code, and in full.

- **true parameters**: ``sum(p.numel())``.
- **thop-style parameters and MACs**: what ``thop`` (0.1.1.post2209072238, the version of the LightM-UNet paper's
  era) reports. thop registers a counting rule for a fixed list of module *types*; a module counts only if its
  type is on the list (GroupNorm, SiLU and any custom module are not) and it was *called* during the forward.
  It then counts all of that module's parameters, and its MACs by a per-type formula (section 2 of
  ``architectures.md``). Parameters held directly by a custom module (a skip scale, ``A_log``) never count.
  thop walks the module tree and adds a registered module once for every parent it is reached through.
- **full MACs**: every convolution and linear layer, plus the whole of each selective-scan mixer (projections,
  causal convolution, scan, skip and gating) by its closed-form cost. Norms, activations, pooling and
  interpolation are left out.

A Mamba counts for thop as its projections and convolution called once each as modules (``THOP_CHILD_RULES``),
whichever of them our Mamba actually calls; mamba-ssm's fused path calls none of them, its slow path some. A network
declares how thop saw its reference in a class attribute ``thop_multiplicity``:
a mapping from a module type, or a ``(module type, child name)`` pair, to how many times thop counted that
subtree; 0 hides it, 2 counts it twice (nnU-Net's blocks register every layer twice). Factors multiply down
the tree. LightM-UNet declares ``{Mamba: 0}``; LKM-UNet doubles nnU-Net's conv blocks and its encoder.

Counting runs one forward pass on fake tensors (shapes only, no memory, no arithmetic) at the requested input
shape, with the selective scan replaced by a shape-only stand-in, so that even 1 x 1 x 128^3 counts in seconds.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from unittest import mock

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from . import nets
from .layers.mamba import Mamba
from .layers.ss2d import NUM_DIRECTIONS, SS2D

__all__ = ["ComplexityReport", "count_complexity", "build_network", "thop_view", "FULL_MAC_RULES", "THOP_RULES"]

MacRule = Callable[[nn.Module, torch.Tensor, torch.Tensor], int]


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


# ---------------------------------------------------------------- thop 0.1.1.post2209072238 rules
def _thop_conv(module: _ConvNd, x: torch.Tensor, y: torch.Tensor) -> int:
    # thop uses this formula for transposed convolutions too
    return y.numel() * (x.shape[1] // module.groups) * _numel(module.weight.shape[2:])


def _thop_norm(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    affine = getattr(module, "affine", False) or getattr(module, "elementwise_affine", False)
    return 2 * x.numel() * (2 if affine else 1)


def _thop_linear(module: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> int:
    return module.in_features * y.numel()


# thop counts no MACs for nearest and (in this version) trilinear interpolation
_THOP_UPSAMPLE_OPS = {"linear": 5, "bilinear": 11, "bicubic": 224 + 35}


def _thop_upsample(module: nn.Upsample, x: torch.Tensor, y: torch.Tensor) -> int:
    return _THOP_UPSAMPLE_OPS.get(module.mode, 0) * y.numel()


def _thop_avgpool(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return y.numel()


def _thop_adaptive_avgpool(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    window = _numel(x.shape[2:]) / _numel(y.shape[2:])
    return int((window + 1) * y.numel())


def _thop_softmax(module: nn.Softmax, x: torch.Tensor, y: torch.Tensor) -> int:
    features = x.shape[module.dim]
    return x.numel() // features * (3 * features - 1)


def _thop_prelu(module: nn.PReLU, x: torch.Tensor, y: torch.Tensor) -> int:
    return x.numel()


def _zero(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return 0


#: thop's rule per module type, matched by exact type as thop does (nn.Sequential is only walked through).
THOP_RULES: dict[type[nn.Module], MacRule] = {
    **dict.fromkeys(
        (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), _thop_conv
    ),
    **dict.fromkeys(
        (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
        _thop_norm,
    ),
    nn.LayerNorm: _thop_norm,
    nn.Linear: _thop_linear,
    **dict.fromkeys((nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d), _thop_upsample),
    **dict.fromkeys((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), _thop_avgpool),
    **dict.fromkeys((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), _thop_adaptive_avgpool),
    nn.Softmax: _thop_softmax,
    nn.PReLU: _thop_prelu,
    **dict.fromkeys(
        (
            nn.ZeroPad2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Dropout, nn.PixelShuffle,
            nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
            nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
        ),
        _zero,
    ),  # fmt: skip
}


def _thop_mamba_children(module: Mamba, x: torch.Tensor, y: torch.Tensor) -> dict[nn.Module, int]:
    """thop's MACs of a Mamba's projections and convolution, each called once on the Mamba's tokens as a module
    (the convolution padded by d_conv - 1 on both sides), however our Mamba applies them."""
    batch, length = x.shape[:2]
    linears = [module.in_proj, module.x_proj, module.dt_proj]
    linears += [module.out_proj] if isinstance(module.out_proj, nn.Linear) else []
    # thop's linear rule, in_features * output elements, on one output per token
    children = {linear: linear.in_features * batch * length * linear.out_features for linear in linears}
    children[module.conv1d] = batch * module.d_inner * (length + module.d_conv - 1) * module.d_conv
    return children


#: Modules that thop sees through their children, counted by a rule from the module's input and output rather
#: than by the calls the children get inside: which of them our implementation calls is not what thop saw.
THOP_CHILD_RULES: dict[type[nn.Module], Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[nn.Module, int]]] = {
    Mamba: _thop_mamba_children,
}


# ---------------------------------------------------------------- full MAC rules
def _full_conv(module: _ConvNd, x: torch.Tensor, y: torch.Tensor) -> int:
    kernel = _numel(module.weight.shape[2:])
    if isinstance(module, _ConvTransposeNd):
        # every input element meets every kernel tap of its group's output channels once
        return x.numel() * (module.out_channels // module.groups) * kernel
    return y.numel() * (module.in_channels // module.groups) * kernel


def _full_linear(module: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> int:
    return module.in_features * y.numel()


def _scan_macs(d_inner: int, dt_rank: int, d_state: int) -> int:
    """Per token and direction: x_proj, dt_proj, the scan (discretise, update, read out) and the D skip."""
    return d_inner * (dt_rank + 2 * d_state) + dt_rank * d_inner + 4 * d_inner * d_state + d_inner


def _full_mamba(module: Mamba, x: torch.Tensor, y: torch.Tensor) -> int:
    tokens = x.shape[0] * x.shape[1]
    di = module.d_inner
    per_token = module.d_model * 2 * di + di * module.d_conv + _scan_macs(di, module.dt_rank, module.d_state) + di
    if isinstance(module.out_proj, nn.Linear):
        per_token += di * module.out_proj.out_features
    return tokens * per_token


def _full_ss2d(module: SS2D, x: torch.Tensor, y: torch.Tensor) -> int:
    tokens = _numel(x.shape[:-1])
    di = module.d_inner
    per_token = (
        module.d_model * 2 * di
        + di * module.d_conv**2
        + NUM_DIRECTIONS * _scan_macs(di, module.dt_rank, module.d_state)
        + di * module.d_model
    )
    return tokens * per_token


#: Full-MAC rule and category per module type (matched with isinstance). A module with a rule is counted as a
#: whole: the modules it calls are not counted again.
FULL_MAC_RULES: dict[type[nn.Module], tuple[str, MacRule]] = {
    _ConvNd: ("conv", _full_conv),
    nn.Linear: ("linear", _full_linear),
    Mamba: ("mamba", _full_mamba),
    SS2D: ("mamba", _full_ss2d),
}


def _full_rule(module: nn.Module) -> tuple[str, MacRule] | None:
    for cls, rule in FULL_MAC_RULES.items():
        if isinstance(module, cls):
            return rule
    return None


# ---------------------------------------------------------------- counting
@dataclass(frozen=True)
class ComplexityReport:
    """Counts of one network at one input shape. MACs are multiply-accumulates (thop's "FLOPs")."""

    network: str
    input_shape: tuple[int, ...]
    true_params: int
    thop_params: int
    thop_macs: int
    full_macs: int
    full_macs_by_kind: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        kinds = ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in self.full_macs_by_kind.items())
        return "\n".join(
            (
                f"{self.network} at input {tuple(self.input_shape)}",
                f"  true parameters        {self.true_params:>16,}",
                f"  thop-style parameters  {self.thop_params:>16,}",
                f"  thop-style MACs        {self.thop_macs:>16,}  ({self.thop_macs / 1e9:.2f} G)",
                f"  full MACs              {self.full_macs:>16,}  ({self.full_macs / 1e9:.2f} G: {kinds})",
            )
        )


def thop_view(network: nn.Module) -> Mapping:
    """The network's declared ``thop_multiplicity`` (empty: thop saw our modules as they are called)."""
    return getattr(network, "thop_multiplicity", {})


def _shape_only_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    out = torch.zeros_like(u)
    if return_last_state:
        return out, u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    return out


@contextmanager
def _shape_only_scans():
    """Every selective-scan backend replaced by a stand-in that only produces the output's shape.

    The backends sit in the op's dispatch table; on fake tensors the torch backend's chunked loop would cost
    minutes of Python overhead at full resolution while counting needs only the scan's output shape.
    """
    scan_module = importlib.import_module(f"{__package__}.ops.selective_scan")
    stand_ins = dict.fromkeys(scan_module._IMPLEMENTATIONS, _shape_only_scan)
    with mock.patch.dict(scan_module._IMPLEMENTATIONS, stand_ins):
        yield


class _Recorder:
    """Forward hooks that record, per module, thop's MACs and whether it ran, and the full MACs by category."""

    def __init__(self, network: nn.Module) -> None:
        self.thop_macs: dict[nn.Module, int] = {}
        self.called: set[nn.Module] = set()
        self.full_macs: dict[str, int] = {"conv": 0, "linear": 0, "mamba": 0}
        self._inside_rule = 0  # depth of enclosing modules that have a full-MAC rule
        self._inside_child_rule = 0  # depth of enclosing modules in THOP_CHILD_RULES
        self._handles = []
        for module in network.modules():
            self._handles.append(module.register_forward_hook(self._after))
            if _full_rule(module) is not None or type(module) in THOP_CHILD_RULES:
                self._handles.append(module.register_forward_pre_hook(self._before))

    def _before(self, module: nn.Module, args) -> None:
        self._inside_rule += _full_rule(module) is not None
        self._inside_child_rule += type(module) in THOP_CHILD_RULES

    def _record_thop(self, module: nn.Module, macs: int) -> None:
        self.called.add(module)
        self.thop_macs[module] = self.thop_macs.get(module, 0) + macs

    def _after(self, module: nn.Module, args, output) -> None:
        x = args[0] if args else None
        child_rule = THOP_CHILD_RULES.get(type(module))
        if child_rule is not None:
            self._inside_child_rule -= 1
            for child, macs in child_rule(module, x, output).items():
                self._record_thop(child, macs)
        if self._inside_child_rule == 0:
            thop_rule = THOP_RULES.get(type(module))
            self._record_thop(module, 0 if thop_rule is None else thop_rule(module, x, output))
        full_rule = _full_rule(module)
        if full_rule is not None:
            self._inside_rule -= 1
            if self._inside_rule == 0:
                kind, rule = full_rule
                self.full_macs[kind] = self.full_macs.get(kind, 0) + rule(module, x, output)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _declared(view: Mapping, cls: type, name: str | None = None) -> int:
    """The factor declared for the nearest class in ``cls``'s MRO (for its child ``name``), 1 if none."""
    for base in cls.__mro__:
        key = base if name is None else (base, name)
        if key in view:
            return view[key]
    return 1


def _multiplicity(view: Mapping, parent: nn.Module, name: str, module: nn.Module) -> int:
    return _declared(view, type(module)) * _declared(view, type(parent), name)


def _thop_totals(module: nn.Module, recorder: _Recorder, view: Mapping) -> tuple[int, int]:
    """thop's walk of the tree: a module of a registered type counts whole if it was called, anything else is
    walked into, once per parent it is reached through. Returns (parameters, MACs)."""
    if type(module) in THOP_RULES:
        if module not in recorder.called:
            return 0, 0
        return sum(p.numel() for p in module.parameters()), recorder.thop_macs.get(module, 0)
    params = macs = 0
    for name, child in module.named_children():
        factor = _multiplicity(view, module, name, child)
        if factor:
            child_params, child_macs = _thop_totals(child, recorder, view)
            params += factor * child_params
            macs += factor * child_macs
    return params, macs


def count_complexity(network: nn.Module, input_shape: Sequence[int], name: str | None = None) -> ComplexityReport:
    """Count the parameters and MACs of ``network`` for one input of ``input_shape`` (batch included).

    Args:
        network: any of our networks (or any ``nn.Module`` taking one tensor); it is not modified.
        input_shape: full input shape, e.g. ``(1, 3, 512, 512)``.
        name: label for the report; the class name by default.

    Returns:
        a :class:`ComplexityReport`.

    Raises:
        ValueError: ``input_shape`` is not a sequence of positive integers (the network's own check of the
            shape also raises ValueError).
    """
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"count_complexity: `input_shape` must be positive integers, got {shape}.")
    reference = next(network.parameters(), torch.empty(0))
    recorder = _Recorder(network)
    was_training = network.training
    try:
        network.eval()
        with _shape_only_scans(), torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            network(torch.empty(shape, dtype=reference.dtype, device=reference.device))
    finally:
        recorder.remove()
        network.train(was_training)
    view = thop_view(network)
    root_factor = _declared(view, type(network))
    thop_params, thop_macs = _thop_totals(network, recorder, view)
    return ComplexityReport(
        network=name or type(network).__name__,
        input_shape=shape,
        true_params=sum(p.numel() for p in network.parameters()),
        thop_params=root_factor * thop_params,
        thop_macs=root_factor * thop_macs,
        full_macs=sum(recorder.full_macs.values()),
        full_macs_by_kind=dict(recorder.full_macs),
    )


def build_network(spec: str, **kwargs) -> nn.Module:
    """Build a network of :mod:`monai_mamba_nets.nets` from its class name, or ``Class.constructor`` for an
    alternative constructor (e.g. ``"LKMUNet.from_reference_plan"``), with ``kwargs``.

    Raises:
        ValueError: ``spec`` names no exported network or no constructor of it.
    """
    networks = {
        name: obj
        for name, obj in ((name, getattr(nets, name)) for name in nets.__all__)
        if isinstance(obj, type) and issubclass(obj, nn.Module)
    }
    class_name, _, constructor = spec.partition(".")
    if class_name not in networks:
        raise ValueError(f"build_network: unknown network {class_name!r}; choose from {sorted(networks)}.")
    cls = networks[class_name]
    factory = getattr(cls, constructor, None) if constructor else cls
    if not callable(factory):
        raise ValueError(f"build_network: {class_name} has no constructor {constructor!r}.")
    return factory(**kwargs)
