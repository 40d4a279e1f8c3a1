-- The queries served under the most notes (a template the model overuses shows up here first).
SELECT query, COUNT(DISTINCT content_id) AS items, ROUND(AVG(logprob), 3) AS mean_logprob,
       MIN(category) AS a_category
FROM pool
GROUP BY query
ORDER BY items DESC, query
LIMIT 50
