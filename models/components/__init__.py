"""What the baselines (and the losses) share: text path, attention, MLM contextualizer,
subject encoder, the step record and prior preservation."""
