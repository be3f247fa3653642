"""Streamlit helpers shared by the dashboard pages: cached store and backend, the connection sidebar, charts, diffs.

Everything here reads the run store or draws; nothing runs an optimization (that is the worker's job)."""
