"""Query filters (lexical, commercial, harm, shop-name similarity, relevance) and the FilterChain.

    from filters import FilterChain
    result = FilterChain.serving(cfg.filters).run(batch)   # Arrow or pandas in, same out
"""
from filters.base import REASONS
from filters.chain import ChainResult, FilterChain, merge_counts

__all__ = ["FilterChain", "ChainResult", "REASONS", "merge_counts"]
