"""Model parts the losses and the baselines share: CLIP's text projection and padding masks,
CLIP's frozen image tower, the MLM contextualizer."""
