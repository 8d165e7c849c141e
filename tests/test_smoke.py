"""A first end-to-end check: the demo server returns the MovieLens feature tables."""

from sqlstore.client import FeatureStoreClient


def test_demo_server_lists_demo_tables(demo_client: FeatureStoreClient) -> None:
    references = {f"{t['group']}/{t['name']}" for t in demo_client.list_features()}

    assert references == {
        "content/movie_genres",
        "content/movie_popularity",
        "content/movie_ratings",
        "interaction/user_movie_interactions",
        "user/user_activity",
        "user/user_preferences",
    }
