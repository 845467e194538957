"""Training: the option schema, the backbones, the input pipeline and the trainers of both tasks.

Owns every training option (``options``), the backbones and their offline ImageNet
weights (``models``, ``efficientnet_lite``, ``torch_weights``), the segmenter's
architecture (``segmenter``), the input pipeline (``pipeline``), the classification
and segmentation trainers (``train``, ``segment_train``, ``train_common``,
``train_metrics``), knowledge distillation (``soft_targets``, ``distill``) and the
runs registry the Train page reads (``runs``). The top of ``core``: nothing imports it
but the command line and the pages.
"""

MAY_IMPORT = ('contracts', 'dataset', 'serving', 'evaluation')  # the other core packages this one may import (tests/test_architecture.py checks it)
