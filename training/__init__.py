"""Training (torch, never Spark): reward models, query-style SFT (QSA), the CMAQ loop, the baselines and
their shared preference machinery, and evaluation. Its training data comes from the Spark builders in
``jobs.data``; it imports neither ``jobs`` nor pyspark, so it runs on a GPU machine without Spark."""
