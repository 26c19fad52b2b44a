"""VisualEncoder's subject encoder (CLIP vision tower + Q-Former-style mapper)."""
