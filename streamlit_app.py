"""Quantization Explorer: the app's frame. Pages live in `pages/` and hold UI only.

Navigation icons are Material Symbols, drawn from the font Streamlit bundles: emoji need an
emoji font, which headless and minimal systems lack (they showed as empty boxes).

Run with ``streamlit run streamlit_app.py``; ``/_stcore/health`` answers ``ok``.
"""

import streamlit as st

st.set_page_config(page_title="Quantization Explorer", page_icon="🧮", layout="wide")

PAGES = [
    st.Page("pages/model.py", title="Model", icon=":material/deployed_code:", default=True),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/tune:"),
    st.Page("pages/pareto.py", title="Pareto", icon=":material/scatter_plot:"),
    st.Page("pages/layers.py", title="Layers", icon=":material/layers:"),
    st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
    st.Page("pages/kernels.py", title="Kernels", icon=":material/memory:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]

st.navigation(PAGES).run()
