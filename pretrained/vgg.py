"""VGG-19's convolutional trunk, for Gram-D, built here because torchvision is not available.

The layer list mirrors torchvision's ``vgg19().features`` exactly (conv 3x3 + ReLU, max-pool
after each block), so its parameter names are ``features.<i>.weight`` with torchvision's
indices: the ImageNet weights load unchanged from torchvision's ``vgg19-dcbb9e9d.pth`` or from
``timm/vgg19.tv_in1k`` (timm keeps torchvision's indices). A folder of ours holds
``config.json`` (the block widths) and ``model.safetensors``; the tiny test model is this same
class with narrow blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

VGG19_WIDTHS = (64, 128, 256, 512, 512)
VGG19_CONVS_PER_BLOCK = (2, 2, 4, 4, 4)
# Gatys et al.'s style layers: the first ReLU of every block (relu1_1 ... relu5_1).
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def weights_file(path: str | Path) -> Path:
    """``path`` itself, or a folder's first ``.safetensors`` (else ``.pth``) file."""
    path = Path(path)
    if not path.is_dir():
        return path
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"{str(path)!r} holds no .safetensors or .pth weights.")
    return files[0]


class VGGFeatures(nn.Module):
    """VGG-19 trunk returning the activations of the named ReLU layers."""

    def __init__(self, widths: tuple[int, ...] = VGG19_WIDTHS) -> None:
        super().__init__()
        if len(widths) != len(VGG19_CONVS_PER_BLOCK):
            raise ValueError(f"VGG-19 has 5 blocks; got widths {widths}.")
        self.widths = tuple(int(w) for w in widths)
        layers: list[nn.Module] = []
        self.layer_names: dict[int, str] = {}  # index of each ReLU in `features` -> relu<b>_<c>
        channels = 3
        for block, (width, convs) in enumerate(zip(self.widths, VGG19_CONVS_PER_BLOCK), 1):
            for conv in range(1, convs + 1):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=False)]
                self.layer_names[len(layers) - 1] = f"relu{block}_{conv}"
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)

    def forward(
        self, images: torch.Tensor, layers: tuple[str, ...] = STYLE_LAYERS
    ) -> list[torch.Tensor]:
        """Activations (B, C, H, W) of `layers`, in order, for normalised inputs."""
        wanted = set(layers)
        found: dict[str, torch.Tensor] = {}
        x = images
        for index, layer in enumerate(self.features):
            x = layer(x)
            name = self.layer_names.get(index)
            if name in wanted:
                found[name] = x
                if len(found) == len(wanted):
                    break
        return [found[name] for name in layers]

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(
            json.dumps({"architecture": "vgg19", "widths": self.widths})
        )
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> VGGFeatures:
        """Load a folder of ours, a weights file (.safetensors, or .pth read weights-only), or a
        hub snapshot folder holding ``model.safetensors`` (e.g. timm/vgg19.tv_in1k). The block
        widths are read from the weights, so a narrow (tiny) VGG-19 loads the same way."""
        path = weights_file(path)
        if not path.is_file():
            raise FileNotFoundError(f"No VGG-19 weights at {str(path)!r}.")
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        trunk = {k: v for k, v in state.items() if k.startswith("features.")}
        layout = cls(widths=(1,) * len(VGG19_WIDTHS))
        firsts = [i for i in layout.layer_names if layout.layer_names[i].endswith("_1")]
        try:
            widths = tuple(int(trunk[f"features.{i - 1}.weight"].shape[0]) for i in firsts)
            model = cls(widths)
            model.load_state_dict(trunk)
        except (KeyError, RuntimeError) as error:
            raise ValueError(
                f"{str(path)!r} is not a VGG-19 trunk in torchvision's layout ('features.<i>."
                f"weight' for the 16 convolutions): {str(error).splitlines()[0]}"
            ) from error
        return model.eval().requires_grad_(False)
