"""Modalities beyond tables: medical images (DICOM/PNG), clinical text and DNA sequences.

Each modality is a runtime flavor (``image``, ``text``, ``sequence``) whose artifact is a
*bundle*: one zip holding a manifest, the ONNX graph(s) and the declared preprocessing, so the
preprocessing that trained a model is stored, hashed and versioned with it. Heavy imports
(pydicom, Pillow, tokenizers) happen inside the functions that need them: the core installs and
serves tabular models without the ``[imaging]`` or ``[text]`` extras.
"""
