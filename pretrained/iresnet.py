"""ArcFace's IResNet backbone (insightface ``arcface_torch``), built here to load its weights.

The module and parameter names mirror ``recognition/arcface_torch/backbones/iresnet.py``
(``conv1``, ``bn1``, ``prelu``, ``layer1.0.bn1`` ..., ``bn2``, ``fc``, ``features``), so an
arcface_torch ``backbone.pth`` (IResNet-50 / -100 trained on MS1MV3, Glint360K or WebFace600K)
loads unchanged. Inputs are aligned 112 x 112 RGB faces scaled to [-1, 1]; the output is the
embedding before normalisation. A folder of ours holds ``config.json`` (depths, widths,
embedding size) and ``model.safetensors``; the tiny test model (``tiny-arcface``) is this class
with one block per stage and narrow widths.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pretrained.vgg import weights_file

IRESNET_WIDTHS = (64, 128, 256, 512)
IRESNET_DEPTHS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
}


class IBasicBlock(nn.Module):
    """BN - conv3x3 - BN - PReLU - conv3x3 (stride) - BN, plus the (projected) input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet for 112 x 112 faces: four stride-2 stages to 7 x 7, then BN, FC and BN1d."""

    def __init__(
        self,
        depths: tuple[int, ...] = IRESNET_DEPTHS["r50"],
        widths: tuple[int, ...] = IRESNET_WIDTHS,
        embedding_size: int = 512,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(widths) != 4:
            raise ValueError(f"IResNet has 4 stages; got depths {depths} and widths {widths}.")
        self.depths, self.widths = tuple(depths), tuple(widths)
        self.embedding_size = embedding_size
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        inplanes = widths[0]
        for stage, (depth, width) in enumerate(zip(depths, widths), 1):
            blocks = [IBasicBlock(inplanes, width, 2)]
            blocks += [IBasicBlock(width, width) for _ in range(depth - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            inplanes = width
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(widths[-1] * 7 * 7, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) RGB in [-1, 1] -> (B, embedding_size)."""
        x = self.prelu(self.bn1(self.conv1(faces)))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "architecture": "iresnet",
            "depths": list(self.depths),
            "widths": list(self.widths),
            "embedding_size": self.embedding_size,
        }
        (folder / "config.json").write_text(json.dumps(config))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> IResNet:
        """A folder of ours, or an arcface_torch weights file (.pth read weights-only, or
        .safetensors); depths, widths and embedding size are read from the weights."""
        path = weights_file(path)
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items()}
        model = cls(*shape_of(state))
        model.load_state_dict(state)
        return model.eval()


def shape_of(state: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Depths, widths and embedding size of an IResNet state dict."""
    if "fc.weight" not in state or "conv1.weight" not in state:
        raise ValueError("not IResNet weights (no conv1.weight / fc.weight): use arcface_torch's.")
    depths, widths = [], []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        depths.append(len(blocks))
        widths.append(int(state[f"layer{stage}.0.conv1.weight"].shape[0]))
    return tuple(depths), tuple(widths), int(state["fc.weight"].shape[0])
