import psycopg
import redis


def test_postgres_and_redis_are_real(postgres_url, redis_url):
    with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    client = redis.Redis.from_url(redis_url)
    client.set("k", "v")
    assert client.get("k") == b"v"
