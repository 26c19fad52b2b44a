"""LightningModules: the shared base and one file per baseline."""

from models.base import PersonalizationModule
from models.concept_tokens import ConceptSpec
from models.custom_diffusion import CustomDiffusion
from models.textual_inversion import TextualInversion

__all__ = ["ConceptSpec", "CustomDiffusion", "PersonalizationModule", "TextualInversion"]
