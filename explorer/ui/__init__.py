"""Streamlit glue: session state, cached loaders and widget groups. The only package besides
`pages/` and `streamlit_app.py` that imports streamlit; everything computed lives in `explorer/`."""
