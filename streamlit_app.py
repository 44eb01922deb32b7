"""Quantization Explorer: the app's frame. Pages live in `pages/` and hold UI only.

Run with ``streamlit run streamlit_app.py``; ``/_stcore/health`` answers ``ok``.
"""

import streamlit as st

st.set_page_config(page_title="Quantization Explorer", page_icon="🧮", layout="wide")

PAGES = [
    st.Page("pages/model.py", title="Model", icon="📦", default=True),
    st.Page("pages/sweep.py", title="Sweep", icon="🧪"),
    st.Page("pages/pareto.py", title="Pareto", icon="📈"),
    st.Page("pages/layers.py", title="Layers", icon="🧱"),
    st.Page("pages/learn.py", title="Learn", icon="🎓"),
    st.Page("pages/kernels.py", title="Kernels", icon="⚙️"),
    st.Page("pages/export.py", title="Export", icon="📤"),
]

st.navigation(PAGES).run()
