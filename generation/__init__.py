"""Generation: sampling from a module, class images for prior preservation, and the
test / predict stages that generate and score."""
