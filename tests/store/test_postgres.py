"""PostgreSQL's own matters: the listening connection, the notice format, passwords."""

from __future__ import annotations

import psycopg
import trio

from tests.pg import Schema
from trio_gateway.config.models import Gateway
from trio_gateway.store import CONFIG, CONNECTED, DISCONNECTED, Change
from trio_gateway.store.postgres import PostgresStore, display_location

TIMEOUT = 30


async def test_the_listener_comes_back_after_its_connection_is_killed(postgres: Schema):
    with trio.fail_after(TIMEOUT):
        async with (
            PostgresStore.open(postgres.url) as writer,
            PostgresStore.open(postgres.url) as reader,
            reader.notices() as notices,
        ):
            assert (await notices.receive()).topic == CONNECTED
            killed = postgres.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = %s",
                (f'LISTEN "{reader.channel}"',),
            )
            assert killed == [(True,)]
            lost = await notices.receive()
            assert lost.topic == DISCONNECTED and lost.data["error"]
            assert (await notices.receive()).topic == CONNECTED
            assert reader.status().available
            await writer.commit(Change(puts=[Gateway(id="a", name="a")]))
            notice = await notices.receive()
            assert (notice.topic, notice.data) == (CONFIG, {"version": 1})


async def test_notices_of_other_topics_arrive_and_garbage_is_dropped(postgres: Schema):
    """New kinds of message ride on the same channel; a receiver decides what it knows."""
    with trio.fail_after(TIMEOUT):
        async with PostgresStore.open(postgres.url) as store, store.notices() as notices:
            assert (await notices.receive()).topic == CONNECTED
            with psycopg.connect(postgres.url, autocommit=True) as conn:
                for payload in ("not json", "[1, 2]", '{"no": "topic"}'):
                    conn.execute("SELECT pg_notify(%s, %s)", [store.channel, payload])
            await store.publish("ejection", {"upstream": "u", "target": "t", "until": 12.5})
            notice = await notices.receive()
            assert notice.topic == "ejection"
            assert notice.data == {"upstream": "u", "target": "t", "until": 12.5}


async def test_each_schema_has_its_own_channel(postgres: Schema):
    other = Schema()
    other.create()
    try:
        async with PostgresStore.open(postgres.url) as one, PostgresStore.open(other.url) as two:
            assert one.channel != two.channel
            assert one.channel == f"trio_gateway.{postgres.name}"
    finally:
        other.drop()


def test_the_password_is_never_shown():
    shown = display_location("postgresql://gw:s3cret@db.internal:5433/gateway?sslmode=require")
    assert shown == "postgresql://gw@db.internal:5433/gateway"
    assert "s3cret" not in display_location("host=db password=s3cret dbname=x")


async def test_an_idle_connection_the_server_closed_is_replaced_quietly(postgres: Schema):
    """After a database restart the pooled connections are dead: that is not an outage."""
    with trio.fail_after(TIMEOUT):
        async with PostgresStore.open(postgres.url) as store:
            await store.commit(Change(puts=[Gateway(id="a", name="a")]))
            killed = postgres.query(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'trio-gateway' AND pid <> pg_backend_pid()"
                " AND query NOT LIKE 'LISTEN%%'"
            )
            assert killed and all(ok for (_, ok) in killed)
            pids = [pid for (pid, _) in killed]
            while postgres.query(  # noqa: ASYNC110 (termination is a signal: wait until gone)
                "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ):
                await trio.sleep(0.01)
            assert await store.version() == 1
            assert store.status().available
            assert await store.commit(Change(puts=[Gateway(id="b", name="b")])) == 2
