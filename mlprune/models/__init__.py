"""Model registry: the seed's networks, the Frankle & Carbin networks, and torchvision.

Contract (docs/architecture.md):

    MODELS: Registry[Model]          # name -> entry: builder (impl), input needs, help
    INIT_NAMES                       # the inits' names (functions: models.nets.INITS)
    model_entry(name) -> Model       # also for "tv:<name>"
    model_input(name) -> (channels, min_image_size)   # None = any
    build_model(name, *, num_classes, input_shape, init="default", seed=0) -> nn.Module
    prunable(model) -> dict[str, str]                 # ordered {param name: "conv" | "linear"}

This module imports no torch (recipes are planned without it); ``build_model``,
``prunable`` and ``INITS`` load ``models.nets`` on first use. Adding a model is one
``MODELS.add(Model(...))`` entry and its builder.

Models (``model_input`` gives what each needs; ``build_model`` rejects anything else
with a one-line :class:`SpecError`):

=================  ========  =========  ==================================================
name               channels  min size   architecture
=================  ========  =========  ==================================================
``lenet``          any       28         the seed's conv LeNet: conv 6 (5x5) - maxpool -
                                        conv 16 (5x5) - maxpool - fc 120 - fc 84 - fc
                                        classes, ReLU. 28 is the seed's MNIST geometry
                                        (8x8 digits are resized to 28x28); the flatten size
                                        follows the input (4x4x16 at 28 px).
``lenet_300_100``  any       any        Frankle & Carbin's MLP: flatten, 300, 100, classes.
``conv2/4/6``      any       any (*)    Frankle & Carbin 2019: pairs of 3x3 convs (padding
                                        1) of 64, 128, 256 channels, maxpool 2 after each
                                        pair, then fc 256 - 256 - classes (flatten size
                                        follows the input).
``alexnet``        3         32         torchvision's AlexNet adapted to small images
                                        (below): conv1 stride 1 / padding 5 instead of
                                        4 / 2; same parameter names as torchvision.
``vgg11``          3         32         torchvision's VGG-11 (configuration A, no BN,
                                        torchvision's init), classifier head sized to
                                        num_classes.
``resnet20``       any       any        He et al. 2016's CIFAR ResNet: 3x3 conv 16, 3 stages
                                        of 3 basic blocks (16, 32, 64 channels), global
                                        average pool, fc. Shortcut **option A** (identity;
                                        stride-2 subsampling plus zero channel padding where
                                        the shape changes), as in the paper's CIFAR runs: no
                                        shortcut parameters, so every conv is prunable.
``tv:<name>``      3         32 (**)    any torchvision classification model,
                                        ``get_model(name, weights=None, num_classes=n)``.
=================  ========  =========  ==================================================

(*) ``conv2`` / ``conv4`` / ``conv6`` build from 2 / 4 / 8 px (one halving per max
pool); ``model_input`` says None because every built-in dataset is at least 8 px.

(**) ``tv:alexnet`` needs 63 px, ``tv:inception_v3`` 75 px and the ViT models exactly
their image size (224). Every ``tv:`` model is checked with one forward pass on a zero input of the requested
shape at build time, so a size it cannot take is a one-line SpecError, not a traceback
later. ``googlenet`` / ``inception_v3`` are built without auxiliary classifiers (the
training loop expects one output tensor).

Small-input adaptation of ``alexnet`` / ``vgg11`` (both need 3 channels: load grayscale
data with ``channels=3``): torchvision's AdaptiveAvgPool2d would blow a small feature map
(1x1 for VGG at 32 px) up to 7x7 (6x6) and feed 49 (36) identical copies of each value
to a 25088 (9216)-wide first fc layer. We pool to ``min(7, feature size)`` instead and
size the first fc layer to match: the same kind of function, without replicated
inputs (VGG-11 at 32 px: 28.5 M parameters instead of 128.8 M). At 224 px
both are exactly torchvision's architectures except alexnet's conv1 stride / padding.

Inits (``INITS``; applied to every Conv2d and Linear weight, biases set to zero; BatchNorm
keeps weight 1 / bias 0):

- ``default``: whatever the model's constructor does (PyTorch's default layer init, or
  torchvision's own init for VGG / torchvision models);
- ``kaiming_normal``, ``kaiming_uniform``: He et al., fan_in, ReLU gain;
- ``xavier_normal``, ``xavier_uniform``: Glorot & Bengio, gain 1;
- ``glorot``: alias of ``xavier_normal`` (Frankle & Carbin's "Gaussian Glorot").

BatchNorm inits (``BN_INITS``, the root option ``bn_init``; applied after the weight init to
every BatchNorm layer, drawing from the same seeded generator):

- ``default``: PyTorch's (weight 1, bias 0);
- ``uniform``: weight ~ U[0, 1), bias 0 (OpenLTH's ``batchnorm_init='uniform'``, the default
  of its CIFAR ResNets and VGGs).

Train / eval mode: ``alexnet`` and ``vgg11`` have Dropout, ``resnet20`` and many ``tv:``
models BatchNorm; ``build_model`` returns the model in training mode and the training
loop (training.py) owns the mode: it must call ``model.eval()`` before evaluating.

Determinism: ``build_model`` forks the CPU RNG and seeds the fork with ``seed``, so the
same (name, num_classes, input_shape, init, seed) gives bitwise the same weights in any
process, and the caller's global RNG state is left exactly as it was.
"""

from __future__ import annotations

from .catalog import BN_INIT_NAMES, INIT_NAMES, MODELS, Model, model_entry, model_input


def __getattr__(name):
    # build_model, prunable and the init functions need torch: models.nets, on first use
    if name in ("build_model", "prunable", "INITS", "BN_INITS"):
        from . import nets

        return getattr(nets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
