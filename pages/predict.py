"""/predict: the Predict page at its lower-case address (the page itself is pages/4_Predict.py)."""

from ui.frame import run_page

run_page("pages/4_Predict.py")
