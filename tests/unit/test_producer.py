import itertools

from appliance.datasets import Sample
from appliance.pipeline.producer import device_names, ordered

SAMPLES = [Sample(str(i), bytes([i]), "cat") for i in range(5)]


def names(stream, n):
    return [s.name for s in itertools.islice(stream, n)]


def test_sequential_order_cycles_through_the_source():
    assert names(ordered(SAMPLES, "sequential", 0), 7) == ["0", "1", "2", "3", "4", "0", "1"]


def test_shuffle_is_a_permutation_each_pass_and_repeatable():
    first = names(ordered(SAMPLES, "shuffle", 3), 10)
    assert sorted(first[:5]) == sorted(first[5:]) == ["0", "1", "2", "3", "4"]
    assert first == names(ordered(SAMPLES, "shuffle", 3), 10)
    assert first != names(ordered(SAMPLES, "shuffle", 4), 10)


def test_random_draws_from_the_source():
    drawn = names(ordered(SAMPLES, "random", 1), 50)
    assert set(drawn) <= {"0", "1", "2", "3", "4"} and len(set(drawn)) > 1


def test_device_names():
    assert device_names("camera", 3) == ["camera-00", "camera-01", "camera-02"]


def test_a_source_with_images_over_the_limit_is_refused_before_anything_is_sent(
    tmp_path, monkeypatch, capsys
):
    from appliance import cli

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "small.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (tmp_path / "cat" / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(5000))
    monkeypatch.setenv("MAX_IMAGE_BYTES", "1000")
    # No broker anywhere: the refusal must come before any connection is tried.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    assert cli.main(["produce", "--source", str(tmp_path), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 images are over MAX_IMAGE_BYTES (1,000)" in err
    assert "big.png (5,008 bytes)" in err


def test_a_dropped_clients_unanswered_sends_count_as_failed_once():
    from kafka.errors import KafkaTimeoutError

    from appliance.pipeline.producer import Counts

    counts = Counts()
    answered, _ = counts.sending()
    _, timed_out = counts.sending()
    late_ack, late_fail = counts.sending()
    answered(None)
    timed_out(KafkaTimeoutError("Expiring 1 record(s)"))
    assert counts.client_stale
    assert counts.drop_client() == 1  # the third never answered
    assert not counts.client_stale
    late_ack(None)  # the dropped client answering after all changes nothing
    late_fail(KafkaTimeoutError("late"))
    acked, _ = counts.sending()  # the new client's sends count as before
    acked(None)
    assert (counts.sent, counts.acknowledged, counts.failed) == (4, 2, 2)
