"""The text path: concept tokens swapped into the lookup, extra vectors, encodings, the
per-step text requests, CLIP text projection and MLM masking."""
