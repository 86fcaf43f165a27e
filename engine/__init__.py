"""Tunesmith's headless engine: jobs, models, data, methods, training, advisor, export.

Never imports Qt; the GUI drives it through ``python -m engine`` child processes.
"""

__version__ = "0.1.0"
