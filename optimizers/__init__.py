"""PromptOpt: LLM-based prompt optimization (APE, ProTeGi, OPRO, PE2, GPO) as a UI-free library.

The Streamlit pages and the CLI are thin readers of the run store this library writes.
"""

__version__ = "0.1.0"
