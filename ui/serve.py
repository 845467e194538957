"""``python -m ui.serve [streamlit options]``: the app's server, warming up from its first second.

Streamlit runs a page's code only when a browser opens it, so under plain
``streamlit run app.py`` the warm start (:mod:`ui.warm`) begins with the first
visitor, who then waits for TensorFlow and the models. Here it begins while the
server boots: whoever opens the app a few seconds later finds the models loaded.
Every option is passed on to ``streamlit run``.
"""

import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"


def main(argv=None) -> None:
    from streamlit.web import cli

    from ui.warm import warm_start_now

    warm_start_now()
    cli.main(args=["run", str(APP), *(sys.argv[1:] if argv is None else argv)], prog_name="streamlit")


if __name__ == "__main__":
    main()
