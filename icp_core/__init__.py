"""In-context pretraining workbench: order related documents into LLM pretraining contexts.

The engine behind the `icp` command and the Streamlit app. Stages (one module each) are pure
numpy functions; the `stages` package adapts them to the DuckDB workspace (one adapter module
per stage) and `pipeline.py` runs them.
"""

__version__ = "0.1.0"
