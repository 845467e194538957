"""Core logic of the HAM10000 dashboard: data, training, evaluation, prediction.

Nothing in this package imports streamlit. Only the modules that need TensorFlow
import it (``models``, ``torch_weights``, ``pipeline``, ``train``, ``predict``,
``saliency``), so the explorer and the evaluation tables load fast.
"""
