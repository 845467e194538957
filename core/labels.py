"""The one label list of the project, and what each label means.

Every run's config, every model's metadata and every predictions CSV use the
codes in ``CLASSES`` in this order. Serving reads the order from the model's
metadata, never from here, so an older model with another order still works.
"""

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
