"""Checks that need the model and the data, done before any run is created.

A plan is checked without torch when it is built (options, sources, keys). What
needs the architecture's shapes or the dataset's size is checked here, for the
states about to be computed, before the executor creates a single run: a model
that cannot take the data, a layer selector that names no layer, an int amount
larger than a layer, a training time beyond the training, a train_size beyond
the data. Each is the one-line error the computation would have hit later,
after the root and the first training were spent.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SpecError
from .spec.steps import kind_of
from .spec.times import parse_time


@dataclass(frozen=True)
class Parent:
    """What a step is checked against (`StepKind.check`): its architecture's prunable layers
    ``{name: (kind, shape)}``, its data, and the checkpoint time when the state is one (``at``) and
    the step is the state's last."""

    layers: dict
    data: object
    at: str | None = None
    model: object = None  # the architecture (a blank model): for methods that score only some layers


def check_prune(options: dict, parent: Parent) -> None:
    """Selectors name layers, and an int amount is no larger than the layer it prunes."""
    from .pruning import METHODS, layer_plan

    kinds = {name: kind for name, (kind, _) in parent.layers.items()}
    plan = layer_plan(kinds, options)
    if parent.model is not None:
        _check_scorable(parent.model, plan)
    for name, config in plan.items():
        amount = config.get("amount")
        if config.get("skip") or not isinstance(amount, int):
            continue
        shape = parent.layers[name][1]
        structured = METHODS[config["method"]].structured
        units = shape[config["dim"]] if structured else _numel(shape)
        if amount > units:
            raise SpecError(
                f"pruning amount {amount} is larger than layer {name!r} "
                f"({units} {'slices' if structured else 'weights'})"
            )


def check_train(options: dict, parent: Parent) -> None:
    """A checkpoint of the training lies inside it (its length in iterations depends on the data)."""
    from .training.loop import timeline

    line = timeline(options, parent.data.batches_per_epoch(options["batch_size"]))
    if parent.at is not None:
        at = parse_time(parent.at).iterations(line.per_epoch)
        if not 0 < at <= line.total:
            raise SpecError(f"checkpoint {parent.at} is outside the training ({line.total} iterations)")


def _root_spec(node, plans) -> dict:
    for plan in plans:
        by_name = {n.name: n for n in plan.nodes}
        if node.name in by_name and by_name[node.name].key == node.key:
            current = node
            while current.parent is not None and not current.external:
                current = by_name[current.parent]
            return current.root or (current.spec or {}).get("root")
    return node.root


def check_nodes(nodes, plans, workspace=None, *, data_dir=None, load_spec=None) -> None:
    """A one-line SpecError for the first node that cannot be computed (each step's `StepKind.check`)."""
    from .models import prunable
    from .workspace import Workspace

    workspace = workspace or Workspace()
    shapes: dict[str, tuple] = {}
    for node in nodes:
        root = _root_spec(node, plans)
        if root is None:
            continue
        data_dir = _node_data_dir(node, plans, root, data_dir, load_spec)
        cache = repr(sorted(root.items()))
        if cache not in shapes:
            try:
                data = workspace.data(root, data_dir)
                _check_network_fits(root, data)
                model = workspace.build(root, data)
            except SpecError as error:
                raise SpecError(f"{node.label or node.name}: {error}") from None
            except (MemoryError, RuntimeError) as error:  # e.g. image_size 4096: a first layer of 20 GB
                if (
                    not isinstance(error, MemoryError)
                    and "alloc" not in str(error).lower()
                    and "out of memory" not in str(error).lower()
                ):
                    raise
                said = " ".join(str(error).split())
                said = said[said.find("you tried") :] if "you tried" in said else said[:160]
                raise SpecError(
                    f"{node.label or node.name}: the data or the network of model {root['model']!r} "
                    f"on {root['dataset']!r} ({root.get('data') or {}}) does not fit in this machine's "
                    f"memory ({type(error).__name__}: {said}); a smaller image_size or model fits"
                ) from None
            params = dict(model.named_parameters())
            shapes[cache] = (
                data,
                {name: (kind, tuple(params[name].shape)) for name, kind in prunable(model).items()},
                model,
            )
        data, layers, model = shapes[cache]
        if node.root is not None and getattr(node, "weights_file", None):  # a pretrained root: its file fits
            from .models.pretrained import check_fits

            try:
                check_fits(node.weights_file, workspace.blank(root, data))
            except SpecError as error:
                raise SpecError(f"{node.label or node.name}: {error}") from None
        for index, step in enumerate(node.steps):
            kind, options = kind_of(step)
            check = kind.load_check()
            if check is None:
                continue
            try:
                check(options, Parent(layers, data, node.at if index == len(node.steps) - 1 else None, model))
            except SpecError as error:
                raise SpecError(f"{node.label or node.name}: {next(iter(step))}: {error}") from None


def network_bytes(root: dict, data) -> int | None:
    """Bytes of the root's network (its state_dict), counted on torch's meta device: nothing is allocated.
    None when its builder cannot run there."""
    import torch

    from .models import model_entry
    from .models.nets import torchvision_builder

    try:
        entry = model_entry(root["model"])
        builder = torchvision_builder(root["model"][3:]) if entry.torchvision else entry.load()
        with torch.device("meta"):
            model = builder(data.num_classes, tuple(data.input_shape), **entry.check_options(root.get("model_options")))
        return sum(t.numel() * t.element_size() for t in model.state_dict().values())
    except Exception:  # noqa: BLE001 - no estimate: building it for real says what is wrong
        return None


def available_memory() -> int | None:
    """Bytes of memory this machine can give now (psutil's 'available'), None when unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        return None


def _check_network_fits(root: dict, data) -> None:
    """A one-line SpecError, before anything is allocated, when the network alone needs more memory than the
    machine has (e.g. image_size 4096 gives lenet_300_100 a first layer of 20 GB)."""
    needed, available = network_bytes(root, data), available_memory()
    if needed is not None and available is not None and needed > available:
        raise SpecError(
            f"the network of model {root['model']!r} on {root['dataset']!r} "
            f"at input shape {tuple(data.input_shape)} needs {needed / 2**30:.1f} GiB for its weights "
            f"alone; this machine has {available / 2**30:.1f} GiB available (a smaller image_size or "
            f"model fits)"
        )


def _node_data_dir(node, plans, root: dict, data_dir, load_spec):
    """The data_dir a node's data is read from: its plan root's, else the run option's, else the one recorded on
    the external state its lineage starts from."""
    return (
        next((n.data_dir for p in plans for n in p.nodes if n.root is not None and n.root == root and n.data_dir), None)
        or data_dir
        or _recorded_data_dir(node, plans, load_spec)
    )


def node_data_fingerprint(node, plans, workspace, *, data_dir=None, load_spec=None) -> str | None:
    """The fingerprint (`data.readers.data_fingerprint`) of the data a node will be computed on (loaded into
    `workspace`, which keeps it); None for a node without a root spec."""
    root = _root_spec(node, plans)
    if root is None:
        return None
    return workspace.data(root, _node_data_dir(node, plans, root, data_dir, load_spec)).spec.get("fingerprint")


def _check_scorable(model, plan: dict) -> None:
    """A method that can score only some layers (BN-scale: those with a BatchNorm after them) selects no other."""
    from .pruning import METHODS

    for name, config in plan.items():
        entry = METHODS[config["method"]] if "method" in config else None
        if entry is not None and entry.scorable and name not in entry.load_scorable()(model):
            raise SpecError(f"layer {name!r}: method {entry.name!r} cannot score it: {entry.unscored}")


def _recorded_data_dir(node, plans, load_spec):
    """The data_dir recorded on the external state a node's lineage starts from (children reuse it)."""
    for plan in plans:
        by_name = {n.name: n for n in plan.nodes}
        current = by_name.get(node.name)
        while current is not None and not current.external and current.parent is not None:
            current = by_name[current.parent]
        if current is not None and current.external:
            return (current.spec or {}).get("data_dir")
    return None


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
