"""Models in and out of cnnlab: Keras files in (``import_keras``), ONNX out (``export_onnx``)."""

from cnnlab.interop.keras_import import ImportReport, KerasFile, import_keras, read_keras_file
from cnnlab.interop.onnx_export import ExportReport, export_onnx

__all__ = ["import_keras", "read_keras_file", "ImportReport", "KerasFile", "export_onnx", "ExportReport"]
