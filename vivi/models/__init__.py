"""Frame encoder (timm ResNet v2), shot pooling, heads and video-level predictors."""
