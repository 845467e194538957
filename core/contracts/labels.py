"""The one label list of the project, and what each label means.

Every run's config, every model's metadata and every predictions CSV use the
codes in ``CLASSES`` in this order. Serving reads the order from the model's
metadata, never from here, so an older model with another order still works.
"""

import numpy as np

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

CLASS_NAMES = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}

DESCRIPTIONS = {
    "akiec": "Sun-damage lesions (actinic keratoses, Bowen's disease) that can progress to "
    "squamous cell carcinoma. Rough, scaly patches on sun-exposed skin.",
    "bcc": "The most common skin cancer. Grows slowly and rarely spreads, but destroys tissue "
    "locally if left untreated.",
    "bkl": "Benign growths (seborrhoeic keratoses, solar lentigines, lichen-planus-like "
    "keratoses). Harmless, but can look like melanoma.",
    "df": "A benign, firm nodule in the skin, often on the legs. Harmless.",
    "mel": "A malignant tumour of pigment cells. The most dangerous skin cancer; curable when "
    "caught early.",
    "nv": "A common mole: a benign growth of pigment cells. By far the most frequent class in "
    "HAM10000.",
    "vasc": "Benign lesions of blood vessels (cherry angiomas, angiokeratomas, pyogenic "
    "granulomas).",
}

MALIGNANT = frozenset({"mel", "bcc", "akiec"})

DX_TYPES = {
    "histo": "histopathology",
    "follow_up": "follow-up examination",
    "consensus": "expert consensus",
    "confocal": "confocal microscopy",
}

# The metrics' code names (tables, CSV columns) in plain words, with what each one measures: pages show the
# plain name and give the code name in the help. (plain name, what it measures)
METRIC_NAMES = {
    "support": ("Images", "how many images of the class the split holds"),
    "sensitivity": ("Sensitivity", "share of the class's images the model calls that class (recall)"),
    "specificity": ("Specificity", "share of the other classes' images the model does not call this class"),
    "ppv": ("Positive predictive value", "share of the images called this class that truly are (precision)"),
    "npv": ("Negative predictive value", "share of the images not called this class that truly are not"),
    "f1": ("F1 score", "harmonic mean of sensitivity and positive predictive value"),
    "auc": ("ROC AUC", "area under the ROC curve of the class probability: 1 = perfect, 0.5 = chance"),
    "auc_sens_80": ("ROC AUC above 80 % sensitivity",
                    "ISIC's partial area under the ROC curve where sensitivity ≥ 0.8: 1 = perfect, 0.18 = chance"),
    "ap": ("Average precision", "area under the precision-recall curve: the class's share of images = chance"),
    "ece": ("Calibration error (ECE)", "expected calibration error: mean gap between confidence and accuracy "
            "over 15 confidence bins; 0 = perfectly calibrated"),
    "brier": ("Brier score", "mean squared error of the probabilities: 0 best, 2 worst"),
    "nll": ("Log loss", "negative log-likelihood of the true class: lower is better"),
}


def metric_name(code: str) -> str:
    """The plain name of a metric's code name (the code itself when it has none)."""
    return METRIC_NAMES.get(code, (code, ""))[0]


def metric_help(code: str) -> str:
    """What a metric measures, followed by its code name as tables and CSV files spell it."""
    about = METRIC_NAMES.get(code, ("", ""))[1]
    return f"{about[:1].upper()}{about[1:]}. Code name: `{code}`." if about else f"Code name: `{code}`."


def encode_labels(labels, classes) -> np.ndarray:
    """Map label strings to indices into ``classes``; unknown labels raise ``ValueError``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in labels} - set(index))
    if unknown:
        raise ValueError(f"unknown labels {unknown}; expected one of {list(classes)}")
    return np.array([index[str(v)] for v in labels], dtype=np.int64)
