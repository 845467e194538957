"""/explore: the Explore page at its lower-case address (the page itself is pages/1_Explore.py)."""

from ui.frame import run_page

run_page("pages/1_Explore.py")
