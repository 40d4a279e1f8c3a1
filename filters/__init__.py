"""Query filters (lexical, commercial, harm, shop-name similarity, relevance) and the FilterChain."""
