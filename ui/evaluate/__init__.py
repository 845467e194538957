"""Streamlit helpers of the Evaluate page, one module per group of tabs.

Every number is computed from a predictions CSV (``core.evaluation.evaluate``), never by
running the model, except for an external test set, which is predicted once and
read from there like any other split, and the parity check of a TFLite export. Cached loaders are keyed by path and
modification time.

``tabs``         the page's tabs, declared once as (label, panel) pairs
``common``       session keys, the evaluated :class:`~ui.evaluate.common.Source`, cached loaders, pickers
``sources``      which predictions to evaluate: a model's val/test split or an external test set
``panels``       summary, confusion matrix, per-class table, ROC/PR curves, operating point
``reliability``  calibration and the subgroup audit
``compare``      run comparison and downloads
``model_export`` the model as a TFLite file for on-device inference, with its parity figures
``segmentation`` the lesion segmenter: scores with intervals, Dice histogram, per-class table, worst cases
"""
