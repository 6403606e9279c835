import itertools

from appliance.datasets import Sample
from appliance.producer import device_names, ordered

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
