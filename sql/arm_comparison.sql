-- needs: arms
-- The A/B arms of the current version side by side: per arm, the items it serves, queries per
-- served item, items quarantined, its drop reasons (most frequent first), and for every other arm
-- the mean overlap of the two arms' served queries per item they both serve (Jaccard: 1 = the same
-- queries, 0 = none in common) with the share of those items whose top query is the same.
WITH served AS (
  SELECT arm, content_id, collect_set(query) AS queries, min_by(query, rank) AS top_query
  FROM pool GROUP BY arm, content_id
), per_arm AS (
  SELECT arm, count(*) AS items_served, round(avg(size(queries)), 2) AS queries_per_item
  FROM served GROUP BY arm
), drop_counts AS (
  SELECT arm, reason, count(*) AS n FROM dropped GROUP BY arm, reason
), drops AS (
  SELECT arm, concat_ws(', ', transform(sort_array(collect_list(struct(-n AS k, reason, n))),
                                        d -> concat(d.reason, '=', d.n))) AS drop_reasons
  FROM drop_counts GROUP BY arm
), quarantined AS (
  SELECT arm, count(DISTINCT content_id) AS items_quarantined FROM quarantine GROUP BY arm
), pairs AS (
  SELECT a.arm, b.arm AS other_arm,
         avg(size(array_intersect(a.queries, b.queries)) / size(array_union(a.queries, b.queries))) AS jaccard,
         avg(CASE WHEN a.top_query = b.top_query THEN 1.0 ELSE 0.0 END) AS same_top
  FROM served a JOIN served b ON a.content_id = b.content_id AND a.arm <> b.arm
  GROUP BY a.arm, b.arm
), overlap AS (
  SELECT arm, concat_ws(', ', sort_array(collect_list(concat(other_arm, ': jaccard ', format_number(jaccard, 3),
                                                             ', same top ', format_number(same_top, 3))))) AS overlap
  FROM pairs GROUP BY arm
)
SELECT p.arm, p.items_served, p.queries_per_item, coalesce(q.items_quarantined, 0) AS items_quarantined,
       d.drop_reasons, o.overlap
FROM per_arm p
LEFT JOIN quarantined q ON p.arm = q.arm
LEFT JOIN drops d ON p.arm = d.arm
LEFT JOIN overlap o ON p.arm = o.arm
ORDER BY p.arm
