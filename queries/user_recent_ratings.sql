-- title: A user's most recent ratings
-- description: The latest ratings of one user, newest first, with the movie title
-- description: (ties in time: lower movie_id first).
-- param: user_id INTEGER | MovieLens user id
-- param: limit INTEGER = 20 min 0 | Number of ratings to return
SELECT
    i.event_timestamp,
    i.movie_id,
    g.title,
    i.rating
FROM interaction.user_movie_interactions AS i
LEFT JOIN content.movie_genres AS g USING (movie_id)
WHERE i.user_id = $user_id
ORDER BY i.event_timestamp DESC, i.movie_id
LIMIT $limit
