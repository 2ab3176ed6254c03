"""What one process keeps between the states it computes: loaded data, model templates, traced channel
groups, the device and how training runs there (`Workspace`). Used by the step runners, the pre-run
checks (`validate`), the Python API and the report (which reads test images), below all of them."""

from __future__ import annotations

import copy

import torch

from .errors import SpecError
from .spec.keys import canonical_json


class Workspace:
    """What one process keeps between the states it computes: data, model templates, the device and
    how training runs there (``channels_last``, ``compile``: run options, not part of any key)."""

    def __init__(self, device=None, *, channels_last: bool = False, compile: bool = False):
        self.device = device if device is not None else torch.device("cpu")
        self.channels_last, self.compile = channels_last, compile
        self._data: dict[str, object] = {}
        self._templates: dict[str, torch.nn.Module] = {}
        self._groups: dict[str, list] = {}

    @property
    def placement(self):
        """Where and how trainings compute here (`training.loop.Placement`)."""
        from .training.loop import Placement

        return Placement(self.device, self.channels_last, self.compile)

    @staticmethod
    def _data_options(root: dict, data_dir: str | None) -> tuple[dict, str]:
        from .models import model_input

        channels, min_size = model_input(root["model"])
        options = {
            "val_size": 0,
            "augment": None,
            "image_size": None,
            "channels": None,
            "train_size": None,
            "test_size": None,
            **root["data"],
        }
        options["channels"] = options["channels"] or channels
        options["min_image_size"] = min_size  # upsample small images only
        return options, canonical_json([root["dataset"], options, data_dir])

    def data(self, root: dict, data_dir: str | None):
        from .data.loading import load_data

        options, cache_key = self._data_options(root, data_dir)
        if cache_key not in self._data:  # batches delivered on the device (resident there when they fit)
            self._data[cache_key] = load_data(root["dataset"], data_dir=data_dir, device=self.device, **options)
        return self._data[cache_key]

    def loaded_fingerprint(self, root: dict, data_dir: str | None) -> str | None:
        """The fingerprint of the root's data (`data.readers.data_fingerprint`) if this workspace loaded it."""
        data = self._data.get(self._data_options(root, data_dir)[1])
        return data.spec.get("fingerprint") if data is not None else None

    def build(self, root: dict, data, seed: int | None = None) -> torch.nn.Module:
        """A freshly initialized module of the root's architecture (`seed`: another init seed)."""
        from .models import build_model

        return build_model(
            root["model"],
            num_classes=data.num_classes,
            input_shape=tuple(data.input_shape),
            init=root["init"],
            seed=root["seed"] if seed is None else seed,
            options=root.get("model_options"),
            bn_init=root.get("bn_init", "default"),
        )

    def blank(self, root: dict, data) -> torch.nn.Module:
        """A module of the root's architecture whose weights are about to be overwritten.

        A copy of a cached one: deepcopy is ~10x cheaper than a fresh seeded random
        initialization (3 ms per state for lenet_300_100). Models over 64 MB are built anew
        rather than kept twice in memory.
        """
        cache_key = canonical_json(root)
        template = self._templates.get(cache_key)
        if template is None:
            model = self.build(root, data)
            size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            if size > 64 * 1024**2:
                return model
            self._templates[cache_key] = template = model
        return copy.deepcopy(template)

    def channel_groups(self, root: dict, data) -> list:
        """The architecture's channel groups (`pruning.structure.channel_groups`), traced once per root."""
        from .pruning.structure import channel_groups

        cache_key = canonical_json([root["model"], root.get("model_options"), data.num_classes, list(data.input_shape)])
        if cache_key not in self._groups:
            try:
                self._groups[cache_key] = channel_groups(self.blank(root, data), tuple(data.input_shape))
            except SpecError as error:  # remembered: an architecture that cannot be traced is not traced again
                self._groups[cache_key] = error
        found = self._groups[cache_key]
        if isinstance(found, SpecError):
            raise SpecError(str(found))
        return found

    def removed_extras(self, root: dict, data, weights: dict, masks: dict) -> dict:
        """{tensor: bool mask} of the biases and BatchNorm entries of removed channels (every weight of
        the channel masked: `pruning.structure`); {} when no channel is removed. A model whose channels
        cannot be traced has none (a coupled prune step on it has already failed with a SpecError)."""
        from .pruning.structure import extra_masks, has_removable

        if not has_removable(masks):
            return {}
        try:
            groups = self.channel_groups(root, data)
        except SpecError:
            return {}
        return extra_masks(groups, masks, {name: t.shape for name, t in weights.items()})
