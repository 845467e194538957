"""/train: the Train page at its lower-case address (the page itself is pages/2_Train.py)."""

from ui.frame import run_page

run_page("pages/2_Train.py")
