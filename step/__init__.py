"""The step contract: what one training step computed (StepRecord), how each sample's
noise and timestep are drawn, the prior-preservation split, and the text requests a loss
folds into the step's text-encoder call. Losses and baselines both import it; it imports
neither."""
