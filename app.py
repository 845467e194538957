"""Home page of the HAM10000 Lesion Lab (pages/ directory convention of Streamlit)."""

from pathlib import Path

import streamlit as st

from ui.frame import NOT_A_DEVICE, dataset_status, page_setup

PAGES = (
    ("pages/1_Explore.py", "Explore", ":material/search:",
     "Class balance, patients, body sites and the images themselves, with linked filters and lesion outlines."),
    ("pages/2_Train.py", "Train", ":material/model_training:",
     "Launch a training run in the background and follow it live."),
    ("pages/3_Evaluate.py", "Evaluate", ":material/analytics:",
     "Compare models on the held-out split: confusion matrix, per-class metrics, calibration."),
    ("pages/4_Predict.py", "Predict", ":material/stethoscope:",
     "Classify an image and see where the model looked (Grad-CAM)."),
)

page_setup("HAM10000 Lesion Lab", "🔬")
st.title("HAM10000 Lesion Lab")
st.write(
    "Explore, train, evaluate and explain classifiers of dermatoscopic images on HAM10000: "
    "10,015 images of 7,470 pigmented skin lesions in seven diagnostic classes."
)
for script, label, icon, text in PAGES:
    if (Path(__file__).parent / script).is_file():
        st.page_link(script, label=label, icon=icon)
    else:
        st.markdown(f"{label} (not installed)")
    st.caption(text)
st.info(dataset_status())
st.caption(NOT_A_DEVICE)
