"""Foreground masks of the concept's photos, and R-Aug's regions, for CLIF's augmented data.

Every backend answers one question: image (+ class word) -> (H, W) bool foreground mask.
``masks.py`` reads a folder of user masks named like the photos; ``fallback.py`` segments
without any weights (GrabCut seeded from how unlike the border each pixel is), so the whole
path runs offline; ``sam.py`` prompts SAM with a Grounding-DINO box of the class word.
``regions.py`` over-segments a concept into labelled regions (superpixels by place), and
``sam.py`` also finds named parts (``part_lists.py``) and SAM's pieces; ``factory.py`` builds
a backend or region finder by name.
"""
