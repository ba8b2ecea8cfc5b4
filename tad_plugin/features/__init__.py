"""Self-supervised feature extractor (SimCLR ResNet-18) used by the inner loop to embed samples and anchors."""
