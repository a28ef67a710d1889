"""Stepwise dashboard (placeholder until the pages land)."""

import streamlit as st

st.title("Stepwise")
