-- Coverage per category: items served, queries per item, and items fully filtered or quarantined.
WITH served AS (
  SELECT category, content_id, COUNT(*) AS queries FROM pool GROUP BY category, content_id
), filtered AS (
  SELECT d.category, COUNT(DISTINCT d.content_id) AS items_fully_filtered
  FROM dropped d LEFT ANTI JOIN pool p ON d.content_id = p.content_id
  GROUP BY d.category
), quarantined AS (
  SELECT category, COUNT(DISTINCT content_id) AS items_quarantined FROM quarantine GROUP BY category
), served_by_category AS (
  SELECT category, COUNT(*) AS items_served, ROUND(AVG(queries), 2) AS queries_per_item
  FROM served GROUP BY category
), categories AS (
  SELECT category FROM served_by_category UNION SELECT category FROM filtered
  UNION SELECT category FROM quarantined
)
SELECT c.category,
       COALESCE(s.items_served, 0)         AS items_served,
       s.queries_per_item,
       COALESCE(f.items_fully_filtered, 0) AS items_fully_filtered,
       COALESCE(q.items_quarantined, 0)    AS items_quarantined
FROM categories c
LEFT JOIN served_by_category s ON s.category = c.category
LEFT JOIN filtered f ON f.category = c.category
LEFT JOIN quarantined q ON q.category = c.category
ORDER BY c.category
