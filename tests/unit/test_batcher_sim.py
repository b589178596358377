"""bench/batcher_sim.py: the batcher's schedule against a sleeping engine stand-in. With 64
closed-loop clients, two batches in flight split each cycle's requests into two engine calls,
and without the split one call takes them all, as with one batch in flight."""

from bench.batcher_sim import main


def test_two_in_flight_split_a_closed_loop_into_two_groups(tmp_path):
    rows = main([
        "--engine-tokens-per-s", "400000", "--seconds", "1.0",
        "--host-ms-per-request", "0.2", "--out", str(tmp_path / "sim.json"),
    ])
    by = {(r["batches_in_flight"], r["split"]): r for r in rows}
    assert set(by) == {(1, True), (2, True), (2, False)}
    one, split, unsplit = by[1, True], by[2, True], by[2, False]
    # Every cycle's 64 requests are queued before a batch is built: one call takes them all
    # unless the queue is split over the two free slots (the last cycle may be partial).
    assert one["requests_per_call"] > 48 and unsplit["requests_per_call"] > 48
    assert split["requests_per_call"] < 40
    assert all(r["tokens_per_s"] > 0 and r["command"].startswith("python -m bench.batcher_sim")
               for r in rows)
    assert (tmp_path / "sim.json").exists()
