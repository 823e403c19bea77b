"""The app's entry point: `streamlit run app/main.py [-- --workspace WS]`, or `icp app`.

PAGES lists every page; tests import it (the navigation itself only runs as a script).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
# `streamlit run` puts app/ on sys.path, but pages import the `app` package from its parent
if str(APP_DIR.parent) not in sys.path:
    sys.path.insert(0, str(APP_DIR.parent))


@dataclass(frozen=True)
class PageSpec:
    file: str  # relative to app/
    title: str
    icon: str


PAGES: tuple[PageSpec, ...] = (
    PageSpec("pages/overview.py", "Overview", ":material/monitoring:"),
    PageSpec("pages/contexts.py", "Contexts", ":material/view_list:"),
    PageSpec("pages/map.py", "Map", ":material/scatter_plot:"),
    PageSpec("pages/graph.py", "Neighbour graph", ":material/hub:"),
    PageSpec("pages/compare.py", "Compare", ":material/compare_arrows:"),
    PageSpec("pages/export.py", "Export", ":material/download:"),
)


def main() -> None:
    import streamlit as st

    # no Deploy button or developer menu: the app is a tool, not a Streamlit project
    st.set_option("client.toolbarMode", "minimal")
    st.set_page_config(page_title="ICP workbench", page_icon=":material/hub:", layout="wide")
    pages = [
        st.Page(APP_DIR / spec.file, title=spec.title, icon=spec.icon, default=index == 0)
        for index, spec in enumerate(PAGES)
    ]
    st.navigation(pages).run()


if __name__ == "__main__":
    main()
