"""Every Spark program and Spark helper: the nightly pool job and its steps (plan, generate, gates,
publish), nearline, purge, the training-data builders (``jobs.data``), the session builder, Arrow↔Spark
schemas, reading a pool version with Spark, analyst SQL. Extract, transform, load."""
