def test_smoke(proxy):
    with proxy.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
