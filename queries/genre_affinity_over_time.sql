-- title: A user's genre affinity per year
-- description: For one user and each calendar year (UTC) of their ratings: how many rated
-- description: movies carry each genre, the mean rating of those movies, and the genre's share
-- description: of that year's genre tags. A movie with three genres counts once for each.
-- param: user_id INTEGER | MovieLens user id
-- param: min_ratings INTEGER = 1 min 1 | Ratings a genre needs in a year to be listed
WITH tagged AS (
    SELECT
        year(i.event_timestamp) AS rating_year,
        unnest(g.genres) AS genre,
        i.rating
    FROM interaction.user_movie_interactions AS i
    JOIN content.movie_genres AS g USING (movie_id)
    WHERE i.user_id = $user_id
),
per_genre AS (
    SELECT rating_year, genre, count(*) AS ratings, avg(rating) AS rating_mean
    FROM tagged
    GROUP BY ALL
)
SELECT
    rating_year,
    genre,
    ratings,
    rating_mean,
    ratings / sum(ratings) OVER (PARTITION BY rating_year) AS genre_share
FROM per_genre
QUALIFY ratings >= $min_ratings
ORDER BY rating_year, ratings DESC, genre
