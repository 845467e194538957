"""Predict: classify one image and see where the model looked, or classify a batch."""

import streamlit as st

from ui import loaders
from ui import predict as view
from ui import private_mode
from ui import saliency_view
from ui import segment_view
from ui.frame import icon_of

st.title(f"{icon_of('Predict')} Predict")
view.device_notice()
model_dir = view.pick_model()
if model_dir is None:
    st.stop()
loaders.check_model(model_dir)
if st.segmented_control("Where the image is classified", private_mode.MODES, default=private_mode.SERVER,
                        key=private_mode.KEY_MODE) == private_mode.PRIVATE:
    private_mode.show(model_dir)
    st.stop()

# The model is loaded only once there is something to classify, so the page is usable at once
# (the warm start is usually loading it in the background meanwhile).
single, batch = st.tabs(["One image", "Batch"])
with single:
    image = view.pick_input(model_dir)
    if image is not None:
        predictor = loaders.load_predictor(model_dir)
        tta = st.toggle("Test-time augmentation (average over the flips that keep the frame)", key=view.KEY_TTA)
        metadata = view.metadata_fields(predictor, image)  # {} when the model has no metadata branch
        prediction = view.show_prediction(predictor, image, tta, metadata)  # None: flagged and folded away
        if prediction is not None:
            st.subheader("Lesion outline and measurements")
            lesion = segment_view.show_segmentation(image)
            st.subheader("Where did the model look?")
            saliency_view.show_section(model_dir, predictor, image, prediction, predicted_mask=lesion)
with batch:
    view.batch_mode(model_dir)
