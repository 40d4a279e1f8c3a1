"""cmaq: consistent multi-objective aligned related-search query generation.

The core library imports without Spark or a GPU: configuration, schemas, text utilities and the
synthetic world. Engines, filters, training and jobs live in their own packages.
"""
__version__ = "0.1.0"
