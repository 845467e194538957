"""Evaluation: the ISIC 2018 metrics with their intervals, and scoring a model on a split or an external set.

Owns the metrics (``metrics``, ``segmentation_metrics``) and the evaluation command
(``evaluate``), which predicts through :mod:`core.serving` when a set has no
predictions yet.
"""

MAY_IMPORT = ('contracts', 'dataset', 'serving')  # the other core packages this one may import (tests/test_architecture.py checks it)
