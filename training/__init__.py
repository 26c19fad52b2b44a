"""The training runtime every baseline gets: memory switches, optimizer groups and learning
rates, the stop at a non-finite value, weights-only and atomic checkpoints."""
