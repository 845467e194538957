"""Streamlit-only helpers: the shared page frame, cached loaders and widgets.

Imported by ``app.py`` and ``app_pages/`` only; ``core`` never imports this package.
"""
