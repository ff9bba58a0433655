"""The team's own model: privfl builds it from the import path in experiment.toml.

A factory takes the number of input features and of classes (from the data) and
returns a torch module.  For a binary task it may output one logit (privfl then
trains with binary cross-entropy) or two.  Opacus must be able to train it: no
BatchNorm (GroupNorm instead), and ``x.flatten(1)`` rather than ``x.view(len(x), -1)``.
"""

from torch import nn


def make_model(in_features: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(1),
        nn.Linear(in_features, 16),
        nn.ReLU(),
        nn.Linear(16, 1 if num_classes == 2 else num_classes),
    )
