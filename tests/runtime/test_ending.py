"""EndStreams: the idle timers of committed streams and the shutdown's end, in virtual time."""

from __future__ import annotations

import attrs
import trio

from trio_gateway.runtime.ending import LINGER_S, EndStreams, StreamWait


@attrs.define
class Budget:
    timer: float


async def wait_for_provider(wait: StreamWait, woke: list[float], *, hold: float = 1e9) -> None:
    """A stream waiting for its provider (``hold`` seconds at most) under its scope."""
    with wait.scope:
        wait.waiting = True
        await trio.sleep(hold)
        wait.waiting = False
    woke.append(trio.current_time())


async def test_a_waiting_stream_ends_when_its_timer_comes(autojump_clock):
    end, woke = EndStreams(), []
    wait = end.follow(Budget(10.0))
    await wait_for_provider(wait, woke)
    assert woke == [10.0] and wait.scope.cancelled_caught
    end.forget(wait)
    assert end.statistics()["streams"] == 0


async def test_content_moves_the_timer_and_an_earlier_stream_wakes_the_watcher(autojump_clock):
    end, woke = EndStreams(), []
    late = Budget(100.0)
    moved = Budget(50.0)
    early = Budget(20.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_provider, end.follow(late), woke)
        nursery.start_soon(wait_for_provider, end.follow(moved), woke)
        await trio.sleep(1)
        nursery.start_soon(wait_for_provider, end.follow(early), woke)  # earlier than any
        await trio.sleep(30)
        moved.timer = 70.0  # content came (as if between two waits)
    assert woke == [20.0, 70.0, 100.0]


async def test_a_stream_that_is_sending_is_never_cancelled(autojump_clock):
    """The timer comes during a send: the send finishes; the stream sees it before waiting."""
    end = EndStreams()
    wait = end.follow(Budget(5.0))
    with wait.scope:
        await trio.sleep(20)  # sending to a slow client, not waiting
        assert not wait.scope.cancel_called
        assert wait.over()
    assert not wait.scope.cancelled_caught
    end.forget(wait)


async def test_set_ends_waiting_streams_at_once_and_the_others_before_they_wait(autojump_clock):
    end, woke = EndStreams(), []
    sending = end.follow(Budget(1000.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_provider, end.follow(Budget(1000.0)), woke)
        nursery.start_soon(wait_for_provider, end.follow(Budget(1000.0)), woke)
        await trio.sleep(5)
        assert not sending.over()
        end.set()
    assert woke == [5.0, 5.0] and end.is_set()
    assert sending.over() and not sending.scope.cancel_called
    assert end.follow(Budget(1000.0)).over()  # after the end: not even one wait


async def test_the_heap_holds_about_as_many_entries_as_open_streams(autojump_clock):
    end = EndStreams()
    kept = [end.follow(Budget(1e6)) for _ in range(10)]
    for _ in range(5000):
        end.forget(end.follow(Budget(1e6)))
    stats = end.statistics()
    assert stats["streams"] == 10 and stats["heap"] <= 2 * 10 + 64
    for wait in kept:
        end.forget(wait)
    end.forget(kept[0])  # twice: nothing more
    assert end.statistics()["streams"] == 0


async def test_the_watcher_ends_after_lingering_and_a_later_stream_starts_another(autojump_clock):
    end, woke = EndStreams(), []
    wait = end.follow(Budget(3.0))
    await wait_for_provider(wait, woke)
    end.forget(wait)
    await trio.sleep(LINGER_S / 2)
    assert end._watching
    await trio.sleep(LINGER_S + 1)
    assert not end._watching
    wait = end.follow(Budget(trio.current_time() + 2))
    await wait_for_provider(wait, woke)
    assert woke == [3.0, 3.0 + LINGER_S * 1.5 + 1 + 2]


async def test_a_stream_whose_timer_moved_while_it_sent_is_watched_again(autojump_clock):
    """Its timer came while it sent to a slow client (it left the heap); the client's time
    does not count, so the timer moved: its next wait ends at the new timer."""
    end = EndStreams()
    budget = Budget(5.0)
    wait = end.follow(budget)
    with wait.scope:
        await trio.sleep(8)  # sending, past its timer
        assert not wait.watched and not wait.scope.cancel_called
        budget.timer += 8  # AttemptBudget.paused
        assert not wait.over() and wait.watched
        wait.waiting = True
        await trio.sleep(100)
    assert trio.current_time() == 13.0 and wait.scope.cancelled_caught
