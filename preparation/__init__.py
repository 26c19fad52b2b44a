"""Data prepared before training, outside the DataModule's per-sample work: the photos read
and checked, captions (BLIP), the concept's segmentation, CLIF's G/R/M-Aug set, the
synthetic toy, and images the base model generates (class images, general concepts)."""
