"""Training: image-level MoCo + pixel-level cycle-contrastive learning."""
