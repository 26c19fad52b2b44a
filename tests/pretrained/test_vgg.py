"""Our VGG-19 trunk keeps torchvision's layout, so ImageNet weights load by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pretrained.vgg import VGGFeatures

# torchvision's vgg19().features: its conv indices, and relu{b}_1 = ReLU after block b's first conv.
TORCHVISION_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
TORCHVISION_STYLE_RELUS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}


def test_layer_indices_are_torchvisions() -> None:
    model = VGGFeatures()
    convs = [i for i, layer in enumerate(model.features) if isinstance(layer, nn.Conv2d)]
    assert convs == TORCHVISION_CONVS
    assert len(model.features) == 37  # 16 convs + 16 ReLUs + 5 pools
    names = {name: index for index, name in model.layer_names.items()}
    assert {k: names[k] for k in TORCHVISION_STYLE_RELUS} == TORCHVISION_STYLE_RELUS


def test_forward_returns_the_requested_layers_in_order() -> None:
    model = VGGFeatures(widths=(4, 4, 8, 8, 8)).eval()
    maps = model(torch.rand(1, 3, 32, 32), ("relu1_1", "relu3_1"))
    assert [m.shape for m in maps] == [(1, 4, 32, 32), (1, 8, 8, 8)]


def test_loads_a_torchvision_style_checkpoint_weights_only(tmp_path: Path) -> None:
    source = VGGFeatures(widths=(4, 4, 8, 8, 8))
    state = {**source.state_dict(), "classifier.0.weight": torch.zeros(2, 2)}  # extra keys ignored
    torch.save(state, tmp_path / "vgg.pth")
    source.save_pretrained(tmp_path / "folder")
    for loaded in (VGGFeatures.from_pretrained(tmp_path / "vgg.pth"),
                   VGGFeatures.from_pretrained(tmp_path / "folder")):  # fmt: skip
        assert loaded.widths == (4, 4, 8, 8, 8)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())


def test_a_file_that_is_not_vgg19_is_named(tmp_path: Path) -> None:
    state = {k: v for k, v in VGGFeatures(widths=(4,) * 5).state_dict().items() if "34" not in k}
    torch.save(state, tmp_path / "vgg16ish.pth")
    with pytest.raises(ValueError, match="vgg16ish.pth' is not a VGG-19"):
        VGGFeatures.from_pretrained(tmp_path / "vgg16ish.pth")
