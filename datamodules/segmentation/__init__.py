"""Foreground masks of the concept's photos, for CLIF's augmented data (one file per backend).

Every backend answers one question: image (+ class word) -> (H, W) bool foreground mask.
``masks.py`` reads a folder of user masks named like the photos; ``fallback.py`` segments
without any weights (GrabCut seeded from how unlike the border each pixel is), so the whole
path runs offline.
"""
