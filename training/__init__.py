"""Training: data builders, reward models, query-style SFT, the CMAQ loop, baselines, evaluation."""
