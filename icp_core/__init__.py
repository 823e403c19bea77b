"""In-context pretraining workbench: order related documents into LLM pretraining contexts.

The engine behind the `icp` command and the Streamlit app. Stages (one module each) are pure
numpy functions; `stages.py` adapts them to the DuckDB workspace and `pipeline.py` runs them.
"""

__version__ = "0.1.0"
