"""A containers deployment whose state is gone (another checkout, a run killed half way) is named
by `up` and removed by `down`, on this machine's real Docker engine.

Found in CI: a failed run left appliance-cluster-* behind, and the next `up` only said that its
subnet was taken.
"""

from __future__ import annotations

import pytest

from appliance.cloud import localcontainers as lc
from appliance.config import ConfigError

NAME = "appliance-leftover-check"
SUBNET = "10.213.99.0/24"


@pytest.fixture
def left(request: pytest.FixtureRequest):
    if request.config.getoption("--provider") != "containers":
        pytest.skip("the containers provider's own check")
    made = [f"{NAME}-kafka", f"{NAME}-mongodb", f"{NAME}-net"]
    lc.docker("network", "create", "--subnet", SUBNET, f"{NAME}-net")
    for name in made[:2]:
        lc.docker("create", "--name", name, "--network", f"{NAME}-net", lc.BASE_IMAGE, "true")
    yield made
    for name in made[:2]:
        lc.docker("rm", "-f", name, check=False)
    lc.docker("network", "rm", f"{NAME}-net", check=False)


def test_up_names_a_stateless_deployment_and_down_removes_it(left, tmp_path):
    cloud = lc.ContainerCloud(tmp_path / "cloud")
    with pytest.raises(ConfigError) as err:
        cloud.new_state(NAME, SUBNET, tmp_path)
    for name in left:
        assert name in str(err.value)
    assert "down" in str(err.value)
    assert sorted(lc.leftovers(NAME)) == sorted(left)

    cloud.down(NAME)
    assert lc.leftovers(NAME) == []
    # Another deployment's things are not touched.
    assert lc.docker("network", "inspect", "bridge", check=False).returncode == 0
