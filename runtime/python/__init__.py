"""The native PSConv kernel library's loader. Installed as pscompress.runtime; needs no PyTorch."""
