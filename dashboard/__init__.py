"""The Streamlit dashboard: `app.py` (navigation) and one page per file in `views/`."""
