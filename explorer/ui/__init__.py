"""The app's layer between the pages and the engine. The only package besides `pages/` and
`streamlit_app.py` that imports streamlit; everything computed lives in `explorer/`.

Streamlit glue: `state` (session state, cached loaders, the run and its store), `widgets` (widget
groups returning config objects, the sweep job), `rows` (the stored rows as the pages pick and
headline them). Plain data for the pages, without streamlit (tested without an app): `labels`
(choices, headline numbers and texts, every number through `explorer.measure.display`) and
`tables` (the DataFrames the pages show)."""
