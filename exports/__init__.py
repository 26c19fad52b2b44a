"""The learned weights in other tools' formats: A1111 / ComfyUI embeddings, kohya LoRA keys,
the original-layout single-file checkpoint; and ``export.json``, the manifest every export
folder carries (manifest.py)."""
