"""HRSAM model components: window plans, RoPE, Flash Swin, Cycle-scan, encoders, SAM decoder."""
