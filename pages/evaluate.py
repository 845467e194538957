"""/evaluate: the Evaluate page at its lower-case address (the page itself is pages/3_Evaluate.py)."""

from ui.frame import run_page

run_page("pages/3_Evaluate.py")
