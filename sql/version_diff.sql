-- What changed since the previous version: queries added, removed and kept, per category.
WITH cur AS (SELECT DISTINCT category, content_id, query FROM pool),
     prev AS (SELECT DISTINCT category, content_id, query FROM pool_previous)
SELECT COALESCE(cur.category, prev.category) AS category,
       SUM(CASE WHEN prev.query IS NULL THEN 1 ELSE 0 END) AS added,
       SUM(CASE WHEN cur.query IS NULL THEN 1 ELSE 0 END)  AS removed,
       SUM(CASE WHEN cur.query IS NOT NULL AND prev.query IS NOT NULL THEN 1 ELSE 0 END) AS kept
FROM cur FULL OUTER JOIN prev ON cur.content_id = prev.content_id AND cur.query = prev.query
GROUP BY COALESCE(cur.category, prev.category)
ORDER BY category
