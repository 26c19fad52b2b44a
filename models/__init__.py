"""LightningModules: the shared base and one file per baseline."""

from models.base import PersonalizationModule
from models.concept_tokens import ConceptSpec
from models.custom_diffusion import CustomDiffusion
from models.dreambooth import DreamBooth
from models.lora import LoRA
from models.textual_inversion import TextualInversion
from models.visual_encoder import VisualEncoder
from models.xti import XTI

__all__ = [
    "ConceptSpec",
    "CustomDiffusion",
    "DreamBooth",
    "LoRA",
    "PersonalizationModule",
    "TextualInversion",
    "VisualEncoder",
    "XTI",
]
