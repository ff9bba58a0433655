"""Models: built identically everywhere; a model Opacus cannot train is refused up front."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from privfl.models import MODEL_NAMES, ModelNotPrivatizableError, ModelSpec, build_model, ensure_privatizable


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builtin_models_are_privatizable_and_accept_empty_batches(name):
    model = build_model(name, 64, 10, seed=0)
    ensure_privatizable(model)
    assert model(torch.zeros(0, 64)).shape == (0, 10)  # Poisson sampling can draw an empty batch


def test_same_seed_same_weights():
    a, b = build_model("mlp", 64, 10, seed=3), build_model("mlp", 64, 10, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def batchnorm_model(in_features: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, 8), nn.BatchNorm1d(8), nn.Linear(8, num_classes))


def test_batchnorm_is_refused_with_advice():
    model = build_model(f"{__name__}:batchnorm_model", 64, 10)
    with pytest.raises(ModelNotPrivatizableError, match="BatchNorm.*GroupNorm"):
        ensure_privatizable(model)


def test_bad_factory_paths():
    with pytest.raises(ValueError, match="cannot load model factory"):
        build_model("no.such.module:factory", 4, 2)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", 4, 2)


def test_cnn_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        build_model("cnn", 13, 2)


def test_model_spec_round_trip():
    spec = ModelSpec("mlp", 64, 10)
    assert ModelSpec.from_record_values(spec.to_record_values()) == spec
