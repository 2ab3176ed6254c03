"""N networks of one architecture as one computation (torch): `BatchedNetwork`, for `training.batched`.

Every parameter and buffer of the N networks is one tensor ``[N, *shape]``. The architecture's own
forward is traced once (torch.fx) and run by an interpreter with one rule per module type or
function. Feature maps travel with the siblings stacked along the channels, ``[B, N*C, H, W]`` in
the channels_last memory format, so that a convolution is one grouped convolution (groups x N), a
BatchNorm layer one BatchNorm over N*C channels (each sibling's own batch statistics and running
statistics), pooling and ReLU one call; features before a Linear layer travel siblings first,
``[N, B, F]``, and a Linear layer is one batched matmul. On this project's 2-core CPU this is
~2-3x faster than ``torch.func.vmap`` over ``functional_call`` (whose convolution rule moves the
sibling dimension in and out of the channels in the NCHW layout at every layer, with copies, and
whose ReLU and pooling backward run on strided views: docs/performance.md).

Dropout draws each sibling's own masks: from the generator seeded with its (seed, step), in the
order its own forward draws them, with torch's own dropout on a tensor of ones of the shape the
layer sees (the very mask training alone would draw, on any device).

A module or an operation without a rule (`NotBatchable`) is not batched: the model registry's
``batchable`` flag says which models are (tests/test_batched.py trains each batched and alone).
"""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError

__all__ = ["NotBatchable", "BatchedNetwork", "trace"]


class NotBatchable(SpecError):
    """A network or a training that the batched loop cannot run as one computation."""


# ---- the batched network: layouts ------------------------------------------------------------------

CHANNELS = "channels"  # [B, N*C, H, W], channels_last: siblings stacked along the channels
SIBLINGS = "siblings"  # [N, B, ...]: siblings first


class _Value:
    """A batched activation and its layout."""

    __slots__ = ("tensor", "layout")

    def __init__(self, tensor: torch.Tensor, layout: str):
        self.tensor, self.layout = tensor, layout


def _to_channels(value: _Value, n: int) -> torch.Tensor:
    if value.layout == CHANNELS:
        return value.tensor
    x = value.tensor
    if x.dim() != 5:
        raise NotBatchable(f"a 4-d feature map was expected, got per-sibling shape {tuple(x.shape[1:])}")
    _, b, c, h, w = x.shape
    # one copy into [B, H, W, N, C]: the channels_last memory of [B, N*C, H, W]
    return x.permute(1, 3, 4, 0, 2).contiguous().view(b, h, w, n * c).permute(0, 3, 1, 2)


def _to_siblings(value: _Value, n: int) -> torch.Tensor:
    if value.layout == SIBLINGS:
        return value.tensor
    x = value.tensor
    return x.unflatten(1, (n, x.shape[1] // n)).transpose(0, 1)


def _like(value: _Value, tensor: torch.Tensor) -> _Value:
    return _Value(tensor, value.layout)


# ---- the batched network: one rule per module type / function ----------------------------------------


def _conv(net, name, module: nn.Conv2d, x: _Value) -> _Value:
    weight = net.params[f"{name}.weight"].flatten(0, 1)
    bias = net.params[f"{name}.bias"].flatten() if module.bias is not None else None
    out = F.conv2d(
        _to_channels(x, net.n), weight, bias, module.stride, module.padding, module.dilation, module.groups * net.n
    )
    return _Value(out, CHANNELS)


def _linear(net, name, module: nn.Linear, x: _Value) -> _Value:
    h = _to_siblings(x, net.n)
    shape = h.shape
    h = h.reshape(net.n, -1, shape[-1])
    weight = net.params[f"{name}.weight"].transpose(1, 2)
    if module.bias is not None:
        out = torch.baddbmm(net.params[f"{name}.bias"].unsqueeze(1), h, weight)
    else:
        out = torch.bmm(h, weight)
    return _Value(out.reshape(*shape[:-1], out.shape[-1]), SIBLINGS)


def _batchnorm(net, name, module: nn.BatchNorm2d, x: _Value) -> _Value:
    # nn.BatchNorm2d.forward on stacked statistics: each channel is one sibling's channel
    factor = 0.0 if module.momentum is None else module.momentum
    tracked = net.buffers.get(f"{name}.num_batches_tracked")
    if net.training and module.track_running_stats and tracked is not None:
        tracked.add_(1)
        factor = 1.0 / float(tracked[0]) if module.momentum is None else module.momentum
    use_batch = net.training or not module.track_running_stats
    mean, var = net.buffers.get(f"{name}.running_mean"), net.buffers.get(f"{name}.running_var")
    stats = not net.training or module.track_running_stats
    weight = net.params[f"{name}.weight"].flatten() if module.affine else None
    bias = net.params[f"{name}.bias"].flatten() if module.affine else None
    out = F.batch_norm(
        _to_channels(x, net.n),
        mean.view(-1) if stats and mean is not None else None,
        var.view(-1) if stats and var is not None else None,
        weight,
        bias,
        use_batch,
        factor,
        module.eps,
    )
    return _Value(out, CHANNELS)


def _relu_module(net, name, module: nn.ReLU, x: _Value) -> _Value:
    return _like(x, torch.relu_(x.tensor) if module.inplace else torch.relu(x.tensor))


def _spatial(net, name, module, x: _Value) -> _Value:
    # pooling is per channel: the module itself runs on [B, N*C, H, W]
    return _Value(module(_to_channels(x, net.n)), CHANNELS)


def _identity(net, name, module, x: _Value) -> _Value:
    return x


def _dropout(net, name, module: nn.Dropout, x: _Value) -> _Value:
    if not net.training or module.p == 0:
        return x
    return _like(x, x.tensor * net.dropout_noise(x, module.p))


def _flatten_module(net, name, module: nn.Flatten, x: _Value) -> _Value:
    return _flatten(net, x, module.start_dim, module.end_dim)


def _zero_pad_shortcut(net, name, module, x: _Value) -> _Value:
    """`models.nets.ZeroPadShortcut` per sibling: stride subsampling, then output channel o is input
    channel ``index[o]`` (or zeros where it is -1)."""
    h = _to_channels(x, net.n)
    if module.stride != 1:
        h = h[:, :, :: module.stride, :: module.stride]
    b, _, height, width = h.shape
    c = module.in_channels
    per = h.permute(0, 2, 3, 1).unflatten(3, (net.n, c))  # [B, H, W, N, C]
    zero = per.new_zeros((*per.shape[:4], 1))
    index = torch.tensor([i if i >= 0 else c for i in module.index], device=h.device)
    out = torch.cat([per, zero], dim=4).index_select(4, index)  # [B, H, W, N, O]
    return _Value(out.reshape(b, height, width, -1).permute(0, 3, 1, 2), CHANNELS)


def _flatten(net, x: _Value, start_dim=1, end_dim=-1) -> _Value:
    if start_dim != 1 or end_dim != -1:
        raise NotBatchable(f"flatten from dimension {start_dim} to {end_dim} (only 1 to -1 is batched)")
    h = _to_siblings(x, net.n)
    return _Value(h.reshape(h.shape[0], h.shape[1], -1), SIBLINGS)


def _relu_function(net, x: _Value, inplace: bool = False) -> _Value:
    return _like(x, torch.relu_(x.tensor) if inplace else torch.relu(x.tensor))


def _add(net, a, b) -> _Value:
    if not isinstance(a, _Value) or not isinstance(b, _Value):
        raise NotBatchable("an addition of a feature map and a constant")
    if a.layout != b.layout:
        if CHANNELS in (a.layout, b.layout) and max(a.tensor.dim(), b.tensor.dim()) >= 4:
            return _Value(_to_channels(a, net.n) + _to_channels(b, net.n), CHANNELS)
        return _Value(_to_siblings(a, net.n) + _to_siblings(b, net.n), SIBLINGS)
    return _like(a, a.tensor + b.tensor)


def _module_rules() -> dict:
    from ..models.nets import ZeroPadShortcut

    return {
        nn.Conv2d: _conv,
        nn.Linear: _linear,
        nn.BatchNorm2d: _batchnorm,
        nn.ReLU: _relu_module,
        nn.MaxPool2d: _spatial,
        nn.AvgPool2d: _spatial,
        nn.AdaptiveAvgPool2d: _spatial,
        nn.Identity: _identity,
        nn.Dropout: _dropout,
        nn.Flatten: _flatten_module,
        ZeroPadShortcut: _zero_pad_shortcut,
    }


def _relu_inplace(net, x: _Value) -> _Value:
    return _relu_function(net, x, True)


FUNCTION_RULES = {
    torch.flatten: _flatten,
    torch.relu: _relu_function,
    F.relu: _relu_function,
    torch.relu_: _relu_inplace,
    operator.add: _add,
    torch.add: _add,
}


def _check_module(name: str, module: nn.Module) -> None:
    """What a supported module type must also satisfy to be batched."""
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        raise NotBatchable(f"{name}: padding_mode {module.padding_mode!r} (only zeros is batched)")
    if isinstance(module, nn.MaxPool2d) and module.return_indices:
        raise NotBatchable(f"{name}: max pooling that returns its indices")
    if isinstance(module, nn.Flatten) and (module.start_dim != 1 or module.end_dim != -1):
        raise NotBatchable(f"{name}: flatten from dimension {module.start_dim} to {module.end_dim}")


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaves: tuple):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return type(module) in self.leaves or super().is_leaf_module(module, qualified_name)


def _is_relu(node, modules: dict) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    return node.op == "call_function" and node.target in (torch.relu, F.relu, torch.relu_) and len(node.args) == 1


def _pool_before_relu(graph, modules: dict) -> None:
    """ReLU then max pooling -> max pooling then ReLU, where the ReLU feeds only the pooling.

    The two orders give the same values (max over a window commutes with max(x, 0), padding is -inf in
    both) and the same gradients (the window's argmax gets the gradient when it is > 0, nothing else
    does), but the ReLU and its backward then run on a quarter of the elements: LeNet's batched step
    ~8 % faster (the ReLU backward was a tenth of it)."""
    for pool in list(graph.nodes):
        if pool.op != "call_module" or type(modules[pool.target]) is not nn.MaxPool2d or len(pool.args) != 1:
            continue
        relu = pool.args[0]
        if not isinstance(relu, torch.fx.Node) or not _is_relu(relu, modules) or len(relu.users) != 1 or pool.kwargs:
            continue
        source = relu.args[0]
        pool.args = (source,)
        pool.replace_all_uses_with(relu)  # the pooling's users now read the ReLU
        relu.args = (pool, *relu.args[1:])
        pool.append(relu)  # the ReLU now runs after the pooling


def trace(model: nn.Module) -> list:
    """The model's forward as a list of (fx node, rule): `NotBatchable` names the first thing not batched."""
    rules = _module_rules()
    try:
        graph = _Tracer(tuple(rules)).trace(model)
    except Exception as error:  # noqa: BLE001 -- data-dependent control flow and the like: not batched
        raise NotBatchable(
            f"{type(model).__name__} cannot be traced for batching: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    modules = dict(model.named_modules())
    _pool_before_relu(graph, modules)
    steps = []
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            steps.append((node, None))
        elif node.op == "call_module":
            module = modules[node.target]
            rule = rules.get(type(module))
            if rule is None:
                raise NotBatchable(f"module {node.target} ({type(module).__name__}) is not batched")
            _check_module(node.target, module)
            steps.append((node, rule))
        elif node.op == "call_function" and node.target in FUNCTION_RULES:
            steps.append((node, FUNCTION_RULES[node.target]))
        else:
            what = getattr(node.target, "__name__", str(node.target))
            raise NotBatchable(f"{type(model).__name__}: {node.op} {what} is not batched")
    if sum(node.op == "placeholder" for node, _ in steps) != 1:
        raise NotBatchable(f"{type(model).__name__}: a forward of one input is batched")
    return steps


class BatchedNetwork:
    """N networks of one architecture as stacked tensors (``params``, ``buffers``: ``[N, *shape]``), run
    as one computation: ``net(x)`` takes ``[N, B, *input]`` (or one ``[B, *input]`` all siblings see,
    ``shared=True``) and gives the logits ``[N, B, classes]``."""

    def __init__(self, models: list[nn.Module], device: torch.device | None = None):
        if not models:
            raise SpecError("batched training needs at least one network")
        template = models[0]
        self.n = len(models)
        self.steps = trace(template)
        self.modules = dict(template.named_modules())
        shapes = {name: tuple(t.shape) for name, t in template.state_dict().items()}
        for model in models[1:]:
            other = {name: tuple(t.shape) for name, t in model.state_dict().items()}
            if other != shapes:
                differ = sorted(set(other.items()) ^ set(shapes.items()))
                raise NotBatchable(
                    f"sibling networks differ in their tensors ({differ[0][0]}): one architecture is batched"
                )
        device = device if device is not None else next((p.device for p in template.parameters()), torch.device("cpu"))
        self.device = device
        with torch.no_grad():
            self.params = {
                name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
                .to(device)
                .requires_grad_(True)
                for name, _ in template.named_parameters()
            }
            self.buffers = {
                name: torch.stack([dict(m.named_buffers())[name] for m in models]).to(device)
                for name, _ in template.named_buffers()
            }
        for name, module in self.modules.items():
            tracked = self.buffers.get(f"{name}.num_batches_tracked" if name else "num_batches_tracked")
            if (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and module.momentum is None
                and tracked is not None
                and not bool((tracked == tracked[0]).all())
            ):
                raise NotBatchable(
                    f"{name}: BatchNorm with momentum None (a cumulative average) over siblings "
                    f"that have seen different numbers of batches"
                )
        self.training = True
        self.dropouts = any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.modules.values())
        self._seeds: list | None = None
        self._rng: list | None = None

    def train(self, mode: bool = True) -> BatchedNetwork:
        self.training = mode
        return self

    def eval(self) -> BatchedNetwork:
        return self.train(False)

    def __call__(self, x: torch.Tensor, *, shared: bool = False) -> torch.Tensor:
        if shared:
            x = x.unsqueeze(0).expand(self.n, *x.shape)
        env = {}
        for node, rule in self.steps:
            if node.op == "placeholder":
                env[node] = _Value(x, SIBLINGS)
            elif node.op == "output":
                return _to_siblings(env[node.args[0]], self.n)
            else:
                args = torch.fx.node.map_arg(node.args, env.__getitem__)
                kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
                if node.op == "call_module":
                    env[node] = rule(self, node.target, self.modules[node.target], *args, **kwargs)
                else:
                    env[node] = rule(self, *args, **kwargs)
        raise NotBatchable("the traced forward has no output")

    # ---- dropout: each sibling's own draws -------------------------------------------------------
    def seed_step(self, seeds: list[int]) -> None:
        """The dropout seeds of this step, one per sibling (`loop.step_seed`): drawn from at the first
        dropout layer, continued at the next, as each sibling's own forward would."""
        self._seeds, self._rng = list(seeds), [None] * self.n

    def dropout_noise(self, x: _Value, p: float) -> torch.Tensor:
        if self._seeds is None:
            raise NotBatchable("dropout in a batched forward without the step's seeds")
        per = _to_siblings(x, self.n)
        cuda = per.device.type == "cuda"
        noises = []
        for k in range(self.n):
            if self._rng[k] is None:
                torch.manual_seed(self._seeds[k])
            else:
                torch.set_rng_state(self._rng[k][0])
                if cuda:
                    torch.cuda.set_rng_state(self._rng[k][1], per.device)
            # torch's dropout of ones is the scaled mask its dropout of this sibling's input would apply
            noises.append(F.dropout(torch.ones(per.shape[1:], dtype=per.dtype, device=per.device), p, True))
            self._rng[k] = (torch.get_rng_state(), torch.cuda.get_rng_state(per.device) if cuda else None)
        noise = torch.stack(noises)
        return noise if x.layout == SIBLINGS else _to_channels(_Value(noise, SIBLINGS), self.n)

    # ---- per sibling -------------------------------------------------------------------------------
    @torch.no_grad()
    def copy_into(self, k: int, model: nn.Module) -> None:
        """Sibling k's current parameters and buffers into `model` (its own module)."""
        for name, param in model.named_parameters():
            param.copy_(self.params[name][k])
        for name, buffer in model.named_buffers():
            buffer.copy_(self.buffers[name][k])

    @torch.no_grad()
    def non_finite_parameters(self) -> list[str | None]:
        """Per sibling, its first parameter (in the model's order) with a non-finite value, else None."""
        bad: list[str | None] = [None] * self.n
        for name, param in self.params.items():
            finite = torch.isfinite(param).flatten(1).all(dim=1).tolist()
            for k, ok in enumerate(finite):
                if not ok and bad[k] is None:
                    bad[k] = name
        return bad
