-- Why candidates were removed, overall and per category.
SELECT reason, category, COUNT(*) AS candidates,
       ROUND(100.0 * COUNT(*) / SUM(COUNT(*)) OVER (), 2) AS pct_of_drops
FROM dropped
GROUP BY reason, category
ORDER BY candidates DESC, reason, category
