-- A reproducible random sample of served top queries for human review: fill `judgement` with
-- good, same (no better than the note's own title) or bad.
SELECT content_id, category, query, rank, CAST(NULL AS STRING) AS judgement
FROM pool
WHERE rank = (SELECT MIN(rank) FROM pool p2 WHERE p2.content_id = pool.content_id)
ORDER BY xxhash64('review-v1', content_id)
LIMIT 200
