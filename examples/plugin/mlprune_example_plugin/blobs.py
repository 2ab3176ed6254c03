"""The example dataset: four Gaussian blobs drawn as 1x8x8 images, the same on every machine.

A dataset plugin's reader takes the data directory and returns tensors: (x_train, y_train, x_test,
y_test), images (N, C, H, W) as uint8 or as floats in [0, 1]; labels int64. mlprune normalizes them
with the entry's mean and std and feeds them to its deterministic pipeline (seeded order, `skip`).
"""

import torch


def read_blobs(root=None):
    generator = torch.Generator().manual_seed(1234)
    centers = torch.rand((4, 1, 8, 8), generator=generator)

    def draw(n: int):
        labels = torch.arange(n) % 4
        images = centers[labels] + 0.15 * torch.randn((n, 1, 8, 8), generator=generator)
        return images.clamp(0, 1), labels

    x_train, y_train = draw(512)
    x_test, y_test = draw(128)
    return x_train, y_train, x_test, y_test
