"""LightningModules that train helpers for the regularizers, not concepts (the MLM
contextualizers pretraining)."""
