"""Explaining a prediction: saliency maps, their faithfulness, and the command that writes them.

Owns the saliency methods and drawing (``saliency``), the deletion and insertion
curves (``faithfulness``) and the ``explain`` command.
"""

MAY_IMPORT = ('contracts', 'dataset', 'serving')  # the other core packages this one may import (tests/test_architecture.py checks it)
