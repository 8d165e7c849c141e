-- title: Top-rated movies in a genre
-- description: Movies of one genre with at least min_ratings ratings, ranked by mean rating
-- description: (ties: more ratings first, then lower movie_id).
-- param: genre VARCHAR = Drama | Genre name exactly as in content.movie_genres.genres
-- param: min_ratings INTEGER = 50 min 1 | Ratings a movie needs to be listed
-- param: limit INTEGER = 20 min 0 | Number of movies to return
SELECT
    g.movie_id,
    g.title,
    g.year,
    count(*) AS rating_count,
    avg(i.rating) AS rating_mean
FROM interaction.user_movie_interactions AS i
JOIN content.movie_genres AS g USING (movie_id)
WHERE list_contains(g.genres, $genre)
GROUP BY g.movie_id, g.title, g.year
HAVING count(*) >= $min_ratings
ORDER BY rating_mean DESC, rating_count DESC, g.movie_id
LIMIT $limit
