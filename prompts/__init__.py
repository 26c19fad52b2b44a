"""Prompt corpora and prompt sets, as text: the training templates, DreamBench's and our own
evaluation sets, prompts naming several concepts, the context-rich corpus of the MLM loss."""
