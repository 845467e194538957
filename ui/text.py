"""Text from users shown as text: the one escaping helper for everything Streamlit renders as Markdown.

``st.markdown``, ``st.caption``, ``st.write``, alerts, dialog titles and widget labels
all render Markdown: a query parameter or an upload's name such as
``![x](http://host/x.png)`` would become an image the browser fetches, and
``[click](http://…)`` a link. Every piece of user text (query parameters, file and
zip member names, typed paths) goes through :func:`plain` before it meets one of them.
"""

import re

from core.contracts.paths import read_only

# Every character that can start Markdown or one of Streamlit's directives (":material/…:",
# ":red[…]", "$…$"), and "@" (an e-mail autolink); CommonMark shows a backslash-escaped one literally.
_MARKERS = re.compile(r"([\\`*_\[\]<>$~|#{}!@])")
# A colon only where it could start a directive, an emoji code or a URL scheme ("http://"): plain
# prose ("bad.csv: 2 rows") stays as it was written.
_COLON = re.compile(r":(?=\S)")
# Icons (":material/home:") and emoji codes (":smile:") are replaced in the parsed text, after escapes
# are gone: a word joiner (U+2060, invisible) after the colon breaks them.
_SHORTCODE = re.compile(r"(?<=:)(?=[\w+/-]+:)")
_WWW = re.compile(r"(?i)\b(www)\.")  # GFM links "www.host" without a scheme
_LEADING = re.compile(r"^(\s*)([-+=]|\d+(?=[.)]))")  # a list item or an underline at the start
# Control characters (NUL, newlines, ANSI escapes) would break a label or a line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
MAX_CHARS = 200


def plain(text, max_chars: int = MAX_CHARS) -> str:
    """``text`` escaped so that Markdown shows it literally: no link, image, emphasis, HTML or directive.

    Control characters become a space; text longer than ``max_chars`` is cut with "…".
    """
    text = _CONTROL.sub(" ", str(text))
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    text = _COLON.sub(r"\:", _MARKERS.sub(r"\\\1", text))
    text = _SHORTCODE.sub("\u2060", _WWW.sub(r"\1\\.", text))
    return _LEADING.sub(lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2)[0].isdigit() else "\\" + m.group(2)),
                        text, count=1)


NOT_A_DEVICE = (
    "Research and teaching tool. **Not a medical device**: it does not diagnose, "
    "and its output must not guide any treatment."
)


def folder_named(path, variable: str) -> str:
    """How a message names a configured folder: its path, or in a read-only public app only the variable to set."""
    return f"the folder set by `{variable}`" if read_only() else f"`{path}`"
