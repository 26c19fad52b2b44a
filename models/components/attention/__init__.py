"""Attention processors: capture of cross-attention maps, and XTI/P+ per-layer conditioning."""
