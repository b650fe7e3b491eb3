"""Reference forward passes (pure PyTorch, float32) and logit comparison."""
