"""The HAM10000 Lesion Lab's entry script (``python -m ui.serve`` = ``streamlit run app.py``).

Streamlit runs it on every rerun: it declares the pages (``ui.frame.PAGES``), draws the frame they
share and runs the page the address names, a thin script in ``app_pages/``. That folder is not called
``pages/``: Streamlit (1.67) finding a ``pages/`` folder beside the entry script serves a fresh server's
first session with its legacy navigation, running ``pages/explore.py`` for /explore without this frame.
"""

import streamlit as st

from ui.frame import PAGES, page_setup

page = st.navigation(
    # No icon= here: Streamlit makes a page's Material icon the tab's favicon, an SVG the browser fetches from
    # fonts.gstatic.com (a request leaving the app); the frame draws each page's icon itself.
    [st.Page(entry.script, title=entry.title, url_path=entry.url_path or None, default=not entry.url_path)
     for entry in PAGES],
    position="hidden",  # the frame draws the sidebar's links itself, under the project's name
)
page_setup(page.title)
page.run()
