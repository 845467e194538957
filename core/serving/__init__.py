"""Serving a trained model: the model folder, prediction, calibration, the out-of-distribution gate, segmentation, export.

Owns the model folder's files (``modelio``) and the folder opened once (``folder``),
prediction (``predict``), temperature scaling (``calibration``), the OOD scorer and its
fitting (``ood``, ``ood_fit``, ``ood_negatives``), the lesion segmenter at inference
(``segment``, ``lesion_measures``) and the TFLite exports (``export``, ``int8_rounding``,
``private_export``). TensorFlow is imported inside functions only.
"""

MAY_IMPORT = ('contracts', 'dataset')  # the other core packages this one may import (tests/test_architecture.py checks it)
