"""The catalog entries this package adds to mlprune (named in pyproject.toml's entry points).

Each is an entry of the same kind as mlprune's built-ins; its code is named by "module:attribute"
and imported only when a state needs it. Keys hold each entry's name, this distribution's version
and a digest of the modules its code fields name (and the modules of this package they import).
"""

from mlprune.data.catalog import Dataset
from mlprune.models.catalog import Model
from mlprune.pruning.catalog import Method
from mlprune.spec.options import Option, Schema, boolean, integer

MODEL = Model(
    "example_mlp",
    "mlprune_example_plugin.nets:ExampleMLP",
    help="an example plugin model: a one-hidden-layer MLP (32 units)",
)

TAYLOR = Method(
    "example_taylor",
    "weight",
    scorer="mlprune_example_plugin.criteria:taylor_scores",
    default_scope="global",
    options=Schema(
        "example_taylor option",
        (
            Option("batches", 1, integer(1, 10_000), "training batches the scores are summed over"),
            Option("batch_size", 128, integer(1, 10_000), "examples per scoring batch"),
            Option("invert", False, boolean, "keep the lowest scores instead of the highest (a sanity check)"),
        ),
    ),
    short="taylor",
    help="first-order Taylor |w · dL/dw| on training batches (an example plugin criterion)",
)

BLOBS = Dataset(
    "example_blobs",
    "mlprune_example_plugin.blobs:read_blobs",
    num_classes=4,
    channels=1,
    mean=(0.5,),
    std=(0.25,),
    augment="crop+flip",
    default_augment=False,
    needs_files=False,
    help="an example plugin dataset: four Gaussian blobs drawn as 8x8 images (seeded, in memory)",
)
