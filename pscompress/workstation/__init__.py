"""The PyTorch side (the `workstation` extra): pSConv layers, conversion, measuring, checkpoints, fine-tuning."""

# The built-in architectures (archs.ARCHITECTURES builds each), named here without importing
# torch so that the command line can list them in --help on any install.
ARCHITECTURE_NAMES = ("resnet18", "resnet20", "vgg16")
