-- title: Popularity movers
-- description: Movies whose number of ratings grew the most from the previous window of
-- description: window_days days to the window that ends at as_of (exclusive), among movies with
-- description: at least min_ratings ratings in the recent window. Ties: lower movie_id first.
-- param: as_of TIMESTAMP = 2016-10-17T00:00:00Z min 1970-01-01T00:00:00Z max 2100-01-01T00:00:00Z | End of the recent window (exclusive)
-- param: window_days INTEGER = 365 min 1 max 36500 | Length of each window in days
-- param: min_ratings INTEGER = 5 min 1 | Ratings a movie needs in the recent window
-- param: limit INTEGER = 20 min 0 | Number of movies to return
WITH bounds AS (
    SELECT
        $as_of AS recent_end,
        $as_of - to_days(CAST($window_days AS INTEGER)) AS recent_start,
        $as_of - to_days(CAST(2 * $window_days AS INTEGER)) AS previous_start
),
windows AS (
    SELECT
        i.movie_id,
        count(*) FILTER (
            WHERE i.event_timestamp >= b.recent_start AND i.event_timestamp < b.recent_end
        ) AS recent_ratings,
        count(*) FILTER (
            WHERE i.event_timestamp >= b.previous_start AND i.event_timestamp < b.recent_start
        ) AS previous_ratings
    FROM interaction.user_movie_interactions AS i
    CROSS JOIN bounds AS b
    GROUP BY i.movie_id
)
SELECT
    w.movie_id,
    g.title,
    w.recent_ratings,
    w.previous_ratings,
    w.recent_ratings - w.previous_ratings AS rating_change
FROM windows AS w
JOIN content.movie_genres AS g USING (movie_id)
WHERE w.recent_ratings >= $min_ratings
ORDER BY rating_change DESC, w.movie_id
LIMIT $limit
