"""The PyTorch side (the `workstation` extra): pSConv layers, conversion, measuring, checkpoints, fine-tuning."""
