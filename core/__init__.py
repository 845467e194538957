"""Core logic of HAM10000 Lesion Lab: pure Python, never imports Streamlit.

Six packages, each importing only the ones before it (``MAY_IMPORT`` in each
package says which; ``tests/test_architecture.py`` walks every import, those
inside functions included, and fails on a cycle or an import the order forbids):

``contracts``
    labels, configured folders, the run folder, the CSV files, input checks.
``dataset``
    the image table, download, splits and leakage, decoding images and uploads.
``serving``
    the model folder, prediction, calibration, the OOD gate, segmentation, export.
``evaluation``
    metrics with intervals, scoring a model on a split or an external set.
``explaining``
    saliency maps, faithfulness curves, the explain command.
``training``
    the option schema, backbones, input pipeline, the trainers, distillation.

TensorFlow is imported inside the functions that need it, so the explorer and the
evaluation tables load without it.
"""
