"""One boot plan for every provider: order, peers and user-data as `appliance deploy` has them."""

from __future__ import annotations

import pytest

from appliance.cloud import plan, topology, userdata

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the cloud/infra extras")
ADDRESSES = {"mongodb": "10.9.0.10", "ml-server": "10.9.0.11", "kafka": "10.9.0.12",
             "producer": "10.9.0.13"}  # fmt: skip


def settings(boot: plan.Boot) -> dict[str, str]:
    (entry,) = [f for f in yaml.safe_load(boot.user_data)["write_files"]
                if f["path"] == topology.ENV_FILE]  # fmt: skip
    lines = [line for line in entry["content"].splitlines() if not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_plan_boots_in_the_topology_order_naming_real_peers():
    p = plan.make_plan("t", ADDRESSES)
    assert [b.role for b in p.boots] == list(topology.DEPLOY_ORDER)
    kafka = settings(p.by_role()["kafka"])
    assert kafka["MONGODB_URI"] == "mongodb://10.9.0.10:27017"
    assert kafka["INFERENCE_URL"] == "http://10.9.0.11:8000"
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://10.9.0.12:9092"
    assert settings(p.by_role()["producer"])["KAFKA_BOOTSTRAP_SERVERS"] == "10.9.0.12:9092"
    assert p.by_role()["kafka"].hostname == "t-kafka"


def test_a_late_peer_and_a_wrong_address_on_purpose():
    assert plan.order(("kafka",)) == ("kafka", "mongodb", "ml-server", "producer")
    with pytest.raises(ValueError, match="unknown image"):
        plan.order(("nope",))
    p = plan.make_plan("t", ADDRESSES, roles=("kafka",), peers={"mongodb": "10.9.0.99"},
                       role_settings={"kafka": {"DB_BATCH_SIZE": "50"}})  # fmt: skip
    kafka = settings(p.boots[0])
    assert kafka["MONGODB_URI"] == "mongodb://10.9.0.99:27017"
    assert kafka["DB_BATCH_SIZE"] == "50"


def test_each_machine_gets_its_own_fixed_address():
    nics = {r: userdata.StaticNic(f"52:54:00:00:00:{i:02x}", f"{a}/24")
            for i, (r, a) in enumerate(ADDRESSES.items())}  # fmt: skip
    for boot in plan.make_plan("t", ADDRESSES, network=nics).boots:
        document = yaml.safe_load(boot.user_data)
        (nic,) = [f for f in document["write_files"] if f["path"] == userdata.NETWORK_FILE]
        assert f"Address={ADDRESSES[boot.role]}/24" in nic["content"]
