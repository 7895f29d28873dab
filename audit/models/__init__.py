"""timm models: construction, preprocessing, training and checkpoints."""
