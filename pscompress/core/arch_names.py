"""The built-in architectures' names, torch-free so the command line lists them in --help on any
install; pscompress.workstation.archs builds each (and checks the two agree)."""

ARCHITECTURE_NAMES = ("resnet18", "resnet20", "vgg16")
