"""The appliance's four hosts, each on its own and then the traffic between them. Runs against a
deployment `appliance cloud up` made (see conftest.py), before test_appliance_pipeline.py: pytest
takes the files in name order, and the faults there reboot hosts.
"""

from __future__ import annotations

import shlex
import time

import pytest
import testinfra

from appliance.cloud import credentials, pki, topology, transport
from tests import kafka_probe, mongodb_probe
from tests.cluster.helpers import run_in_producer_image

pytestmark = pytest.mark.timeout(3600)
PORTS = {
    "mongodb": topology.MONGODB_PORT,
    "ml-server": topology.ML_SERVER_PORT,
    "kafka": topology.KAFKA_PORT,
}
STABLE_WINDOW_S = 30


# -- each host ------------------------------------------------------------------------------------


def test_every_unit_stays_active_with_a_healthy_container(machines):
    """Active and healthy now, and still so with no restart over a 30 s window (NRestarts)."""
    before = {
        (m.role, unit): int(m.unit_property(unit, "NRestarts"))
        for m in machines.values()
        for unit in topology.ROLES[m.role].units
    }
    deadline = time.monotonic() + STABLE_WINDOW_S
    while time.monotonic() < deadline:
        for m in machines.values():
            for unit in topology.ROLES[m.role].units:
                assert m.unit_property(unit, "ActiveState") == "active", f"{m.role}: {unit}"
        time.sleep(5)
    for m in machines.values():
        detail = m.wait_healthy(60)
        for unit in topology.ROLES[m.role].units:
            after = int(m.unit_property(unit, "NRestarts"))
            assert after == before[(m.role, unit)], f"{m.role}: {unit} restarted ({detail})"


@pytest.mark.parametrize("role", list(PORTS))
def test_service_listens_where_peers_reach_it(machines, role):
    machine = machines[role]
    addresses = machine.wait_for_open_port(PORTS[role], 60)
    assert {"0.0.0.0", "*", "[::]", machine.address} & set(addresses), addresses


@pytest.mark.parametrize("role", list(topology.ROLES))
def test_settings_file_is_root_only(cloud, role):
    url, options = cloud.testinfra_host(role)
    host = testinfra.get_host(url, **options)
    settings = host.file(topology.ENV_FILE)
    assert settings.exists
    assert (settings.user, settings.group, settings.mode) == ("root", "root", 0o600)


# What each unit's container is handed from /etc/appliance/tls (the roles' *_tls_files), and as
# which uid: the images' own users.
TLS_FILES = {
    "appliance-kafka.service": (["ca.pem", "kafka.pem"], 10001),
    "appliance-consumer-db.service": (["ca.pem"], 10001),
    "appliance-consumer-inference.service": (["ca.pem"], 10001),
    "appliance-producer.service": (["ca.pem"], 10001),
    "appliance-mongodb.service": (["ca.pem", "mongodb.pem"], 999),
}


@pytest.mark.parametrize("role", list(topology.ROLES))
def test_tls_files_are_root_only_and_each_container_gets_a_copy_of_its_own(cloud, role):
    url, options = cloud.testinfra_host(role)
    host = testinfra.get_host(url, **options)
    units = [u for u in topology.ROLES[role].units if u in TLS_FILES]
    wanted = sorted({name for u in units for name in TLS_FILES[u][0]})
    folder = host.file(transport.TLS_DIR)
    assert (sorted(folder.listdir()) if folder.exists else []) == wanted
    for name in wanted:
        f = host.file(f"{transport.TLS_DIR}/{name}")
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600), name
    for unit in units:
        names, uid = TLS_FILES[unit]
        for name in names:
            copy = host.file(f"/run/appliance/tls/{unit}/{name}")
            assert (copy.uid, copy.mode) == (uid, 0o400), f"{unit}: {name}"
            assert copy.content == host.file(f"{transport.TLS_DIR}/{name}").content


def test_no_secret_shows_in_a_process_list(cloud, machines):
    """The passwords reach the containers through files and their environment, never argv."""
    secrets = [
        transport.of_local_cloud(cloud.root).kafka_password,
        credentials.of_local_cloud(cloud.root).mongodb_password,
    ]
    # What shows that the listing reaches into the host's containers: their servers' processes.
    servers = {"kafka": ("kafka.Kafka",), "mongodb": ("ferretdb", "mongod"),
               "ml-server": ("gunicorn",), "producer": ("dockerd",)}  # fmt: skip
    for m in machines.values():
        listing = m.succeed("ps -eo args")
        assert any(name in listing for name in servers[m.role]), (m.role, listing)
        assert not any(s in listing for s in secrets), m.role


def test_ssh_host_keys_were_made_at_this_boot(machines, is_vm):
    if not is_vm:
        pytest.skip("containers have no cloud-init: the VMs check this")
    fingerprints = {}
    for m in machines.values():
        boot = int(m.succeed("awk '/^btime/ {print $2}' /proc/stat"))
        made = int(m.succeed("stat -c %Y /etc/ssh/ssh_host_ed25519_key"))
        assert made >= boot, f"{m.role}: host key older than this boot: baked into the image"
        fingerprints[m.role] = m.succeed(
            "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
        ).split()[1]
    assert len(set(fingerprints.values())) == len(fingerprints), fingerprints


# -- across hosts ---------------------------------------------------------------------------------


def test_hosts_reach_their_peers_on_the_private_network(machines):
    producer, kafka = machines["producer"], machines["kafka"]
    assert producer.reaches(kafka.address, topology.KAFKA_PORT)
    assert kafka.reaches(machines["mongodb"].address, topology.MONGODB_PORT)
    assert kafka.reaches(machines["ml-server"].address, topology.ML_SERVER_PORT)


def test_mongodb_refuses_a_peer_without_the_deployments_password(machines):
    """From the kafka host, by the consumers' own path: no login, then a wrong password."""
    kafka, mongodb = machines["kafka"], machines["mongodb"]
    script = mongodb_probe.refusal_script(
        mongodb.address, topology.MONGODB_PORT, tls_ca_file=f"{transport.TLS_DIR}/ca.pem"
    )
    out = kafka.succeed(f"docker exec appliance-consumer-db python -c {shlex.quote(script)}", 120)
    assert out.strip().splitlines()[-3:] == mongodb_probe.EXPECTED_TLS


def test_kafka_refuses_a_peer_without_the_deployments_login(machines):
    """From the producer host, by the cameras' own path: no login, a wrong password and a CA
    other than the deployment's are refused; the deployment's login gets a message acknowledged."""
    other_ca = pki.new_authority("another deployment's CA").cert_pem.decode()
    out = run_in_producer_image(
        machines["producer"], kafka_probe.refusal_script(other_ca, "cluster-login-probe")
    )
    # The probe's verdicts; its stderr (each refusal's exception type) comes with them here.
    verdicts = [line for line in out.splitlines() if line.endswith((": refused", ": sent"))]
    assert verdicts == kafka_probe.EXPECTED, out


def test_broker_advertises_its_private_address_to_the_cameras(machines):
    """A metadata request from the producer host names the kafka host's private address."""
    producer, kafka = machines["producer"], machines["kafka"]
    script = (
        "from kafka import KafkaAdminClient; from appliance.config import Settings; "
        "a = KafkaAdminClient(**Settings.from_env().kafka_options()); "
        "print(*[b['host'] + ':' + str(b['port']) for b in a.describe_cluster()['brokers']])"
    )
    out = run_in_producer_image(producer, script)
    assert out.strip().splitlines()[-1] == f"{kafka.address}:{topology.KAFKA_PORT}"
