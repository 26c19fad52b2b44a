"""The DataModule, its prompt sets and augmentation."""

from datamodules.personalization import ConceptData, PersonalizationDataModule

__all__ = ["ConceptData", "PersonalizationDataModule"]
