"""Pretrained models, loaded by hub id or local folder, and the tiny offline ones built in code
(SD pipeline, CLIP tokenizer, CLIP, DINO, BLIP, VGG) for tests and laptop runs."""
