"""Exporters: pSConv models to ONNX (packed PSConv operators) and TFLite. Installed as pscompress.exporters."""
