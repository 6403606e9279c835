"""`appliance deploy` / `destroy` through the real openstacksdk against a fake cloud on loopback.

tests/infra/fake_openstack.py answers Keystone, Nova, Neutron and Glance over HTTP; nothing here is
mocked except the cloud itself.
"""

from __future__ import annotations

import base64
import http.server
import json
import socket
import stat
import threading

import pytest

pytest.importorskip("openstack", reason="openstacksdk comes with the cloud extra")
yaml = pytest.importorskip("yaml")

from appliance import cli  # noqa: E402
from appliance.cloud import credentials, deploy, readiness, topology, transport  # noqa: E402
from appliance.config import ConfigError  # noqa: E402
from tests.infra.fake_openstack import FakeOpenStack  # noqa: E402

ROLES = list(topology.ROLES)
# openstacksdk warns about its own future on nearly every call.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("OS_"):
            monkeypatch.delenv(key)
    with FakeOpenStack() as cloud:
        for key, value in cloud.env.items():
            monkeypatch.setenv(key, value)
        for role in ROLES:
            cloud.cloud.add_image(f"appliance-{role}-0.1.0-1111111", "2026-11-01T00:00:00Z")
            cloud.cloud.add_image(f"appliance-{role}-0.1.0-2222222", "2026-11-02T00:00:00Z")
        cloud.cloud.add_image("appliance-kafka-0.0.9-3333333", "2026-12-01T00:00:00Z")
        (tmp_path / "id.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest cc@test\n")
        yield cloud


def deploy_args(*extra: str) -> list[str]:
    return [
        "deploy",
        "--network",
        "sharednet1",
        "--key-name",
        "appliance-key",
        "--public-key",
        "id.pub",
        "--poll",
        "0.01",
        "--timeout",
        "10",
        *extra,
    ]


def env_of(fake, server_name: str) -> dict[str, str]:
    document = yaml.safe_load(fake.cloud.user_data[server_name])
    (entry,) = [e for e in document["write_files"] if e["path"] == topology.ENV_FILE]
    assert entry["permissions"] == "0600"
    return dict(
        line.split("=", 1) for line in entry["content"].splitlines() if not line.startswith("#")
    )


def tls_files_of(fake, server_name: str) -> dict[str, str]:
    document = yaml.safe_load(fake.cloud.user_data[server_name])
    files = {e["path"]: e for e in document["write_files"] if "/tls/" in e["path"]}
    assert all(e["permissions"] == "0600" and e["owner"] == "root:root" for e in files.values())
    return {path: e["content"] for path, e in files.items()}


def pki_names(pem: str, tls: transport.Transport) -> list[str]:
    """The addresses a server PEM's certificate names, once it is checked against the CA."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificates(pem.encode())[0]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(tls.authority.cert_pem))
    assert "PRIVATE KEY" in pem and tls.authority.key_pem.decode() not in pem
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in names]


def test_deploy_creates_the_four_servers_in_order_with_real_peer_addresses(fake, capsys):
    assert cli.main(deploy_args()) == 0
    cloud = fake.cloud
    creates = [
        path
        for method, path in cloud.requests
        if (method, path) == ("POST", "/compute/v2.1/servers")
    ]
    assert len(creates) == 4
    order = [s["name"] for s in cloud.servers.values()]
    assert order == [f"appliance-{r}" for r in topology.DEPLOY_ORDER]
    ports = cloud.named("ports")
    ip = {role: ports[f"appliance-{role}"]["fixed_ips"][0]["ip_address"] for role in ROLES}
    saved = credentials.load(deploy.credentials_path("appliance"))
    tls = transport.load_or_create(transport.folder_for(deploy.credentials_path("appliance")))
    ca = "/etc/appliance/tls/ca.pem"
    kafka_login = {
        "KAFKA_BOOTSTRAP_SERVERS": f"{ip['kafka']}:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_USERNAME": "appliance",
        "KAFKA_PASSWORD": tls.kafka_password,
        "KAFKA_CA_FILE": ca,
    }
    assert env_of(fake, "appliance-kafka") == {
        **kafka_login,
        "KAFKA_ADVERTISED_LISTENERS": f"SASL_SSL://{ip['kafka']}:9092",
        "KAFKA_KEYSTORE_FILE": "/etc/appliance/tls/kafka.pem",
        "MONGODB_URI": topology.mongodb_uri(
            ip["mongodb"], "appliance", saved.mongodb_password, tls_ca_file=ca
        ),
        "INFERENCE_URL": f"http://{ip['ml-server']}:8000",
    }
    # Auth and TLS are on by default: the server and its clients share the password made for
    # this deployment, kept 0600 beside its state and nowhere else.
    assert env_of(fake, "appliance-mongodb") == {
        "MONGO_INITDB_ROOT_USERNAME": "appliance",
        "MONGO_INITDB_ROOT_PASSWORD": saved.mongodb_password,
        "MONGODB_TLS_CERT_KEY_FILE": "/etc/appliance/tls/mongodb.pem",
        "MONGODB_TLS_CA_FILE": ca,
    }
    assert stat.S_IMODE(deploy.credentials_path("appliance").stat().st_mode) == 0o600
    assert env_of(fake, "appliance-producer") == kafka_login
    # Each server's certificate names the address its peers dial, signed by the deployment's CA.
    for role, name in (("kafka", "kafka.pem"), ("mongodb", "mongodb.pem")):
        files = tls_files_of(fake, f"appliance-{role}")
        assert files[ca] == tls.authority.cert_pem.decode()
        assert ip[role] in pki_names(files[f"/etc/appliance/tls/{name}"], tls)
    for server in cloud.servers.values():
        assert server["status"] == "ACTIVE"
        assert server["metadata"] == {
            "appliance_deployment": "appliance",
            "appliance_role": server["name"].removeprefix("appliance-"),
        }
        # The newest image of this package's version, not the newer 0.0.9 one.
        image = cloud.images[server["image"]["id"]]["name"]
        assert image == f"{server['name']}-0.1.0-2222222"
        assert server["key_name"] == "appliance-key"
    assert "appliance-key" in cloud.keypairs
    out = capsys.readouterr().out
    assert "kafka: cloud-init finished" in out
    state = json.loads((deploy.STATE_DIR / "appliance.json").read_text())
    assert state["members"]["kafka"]["address"] == ip["kafka"]
    assert {"type": "keypair", "name": "appliance-key"} in state["created"]


def rules_of(fake, group: str) -> list[tuple]:
    groups = fake.cloud.named("security-groups")
    by_id = {g["id"]: name for name, g in groups.items()}
    return sorted(
        (r["port_range_min"], by_id.get(r.get("remote_group_id"), r.get("remote_ip_prefix")))
        for r in groups[group]["security_group_rules"]
    )


def test_security_groups_open_only_what_peers_use(fake):
    assert cli.main(deploy_args()) == 0
    assert rules_of(fake, "appliance-mongodb") == [(27017, "appliance-kafka")]
    assert rules_of(fake, "appliance-ml-server") == [(8000, "appliance-kafka")]
    assert rules_of(fake, "appliance-kafka") == [
        (9092, "appliance-kafka"),
        (9092, "appliance-producer"),
    ]
    assert rules_of(fake, "appliance-producer") == []
    ports = fake.cloud.named("ports")
    groups = fake.cloud.named("security-groups")
    for role in ROLES:
        assert ports[f"appliance-{role}"]["security_groups"] == [groups[f"appliance-{role}"]["id"]]


def test_admin_cidr_opens_ssh_and_the_service_ports_to_it(fake, monkeypatch):
    monkeypatch.setattr(deploy, "health_check", lambda role, host: lambda: True)
    assert (
        cli.main(deploy_args("--admin-cidr", "198.51.100.7/32", "--floating-ip-network", "public"))
        == 0
    )
    assert rules_of(fake, "appliance-mongodb") == [
        (22, "198.51.100.7/32"),
        (27017, "198.51.100.7/32"),
        (27017, "appliance-kafka"),
    ]
    assert rules_of(fake, "appliance-producer") == [(22, "198.51.100.7/32")]
    assert len(fake.cloud.neutron["floatingips"]) == 4


def test_mongodb_credentials_reach_both_ends(fake, monkeypatch):
    monkeypatch.setenv("APPLIANCE_MONGODB_PASSWORD", "s3cret/pw")
    assert cli.main(deploy_args("--mongodb-user", "app", "--no-tls")) == 0
    assert env_of(fake, "appliance-mongodb") == {
        "MONGO_INITDB_ROOT_USERNAME": "app",
        "MONGO_INITDB_ROOT_PASSWORD": "s3cret/pw",
    }
    assert env_of(fake, "appliance-kafka")["MONGODB_URI"].startswith("mongodb://app:s3cret%2Fpw@")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--network", "nope"], "--network 'nope': no such network"),
        (["--flavor", "m9.huge"], "flavor 'm9.huge' (for mongodb) does not exist"),
        (["--image-version", "9.9.9"], "no active image named appliance-mongodb-9.9.9-*"),
        (["--image", "kafka=missing"], "--image kafka=missing: no such image"),
        (["--image", "nope=x"], "--image 'nope=x': expected ROLE=VALUE"),
        (["--name", "Bad_Name"], "--name 'Bad_Name'"),
    ],
)
def test_bad_input_fails_before_anything_is_created(fake, capsys, extra, message):
    assert cli.main(deploy_args(*extra)) == 2
    assert message in capsys.readouterr().err
    assert not fake.cloud.servers and not fake.cloud.neutron["ports"]
    assert not fake.cloud.neutron["security-groups"] and not fake.cloud.keypairs


def test_a_missing_key_pair_needs_a_public_key(fake, capsys):
    args = [a for a in deploy_args() if a not in ("--public-key", "id.pub")]
    assert cli.main(args) == 2
    assert "key pair 'appliance-key' does not exist" in capsys.readouterr().err


def test_flavor_per_image_and_explicit_image(fake):
    explicit = fake.cloud.add_image("my-kafka-build")
    assert (
        cli.main(
            deploy_args("--flavor-for", "ml-server=m1.large", "--image", "kafka=my-kafka-build")
        )
        == 0
    )
    servers = {s["name"]: s for s in fake.cloud.servers.values()}
    assert servers["appliance-ml-server"]["flavor"]["id"] == "f2"
    assert servers["appliance-mongodb"]["flavor"]["id"] == "f1"
    assert servers["appliance-kafka"]["image"]["id"] == explicit


def test_a_server_that_fails_to_boot_stops_the_deploy_and_destroy_cleans_up(fake, capsys):
    fake.cloud.fail_servers.add("appliance-kafka")
    with pytest.raises(Exception, match="ERROR"):
        cli.main(deploy_args())
    # mongodb and ml-server came first; the producer was never created.
    assert sorted(s["name"] for s in fake.cloud.servers.values()) == [
        "appliance-kafka",
        "appliance-ml-server",
        "appliance-mongodb",
    ]
    capsys.readouterr()
    assert cli.main(["destroy", "--poll", "0.01"]) == 0
    assert "server appliance-kafka" in capsys.readouterr().out
    cloud = fake.cloud
    assert not cloud.servers and not cloud.neutron["ports"]
    assert not cloud.neutron["security-groups"] and not cloud.keypairs


def test_deploy_again_reuses_what_exists(fake):
    assert cli.main(deploy_args()) == 0
    before = (set(fake.cloud.servers), set(fake.cloud.neutron["ports"]))
    assert cli.main(deploy_args()) == 0
    assert (set(fake.cloud.servers), set(fake.cloud.neutron["ports"])) == before


def test_destroy_removes_everything_once_and_keeps_foreign_things(fake, capsys):
    fake.cloud.keypairs["mine"] = {"name": "mine", "public_key": "ssh-ed25519 AAAA"}
    assert cli.main(deploy_args("--floating-ip-network", "public")) == 0
    other = fake.cloud.add_image("unrelated")
    capsys.readouterr()
    assert cli.main(["destroy", "--poll", "0.01"]) == 0
    out = capsys.readouterr().out
    for role in ROLES:
        assert f"server appliance-{role}" in out and f"port appliance-{role}" in out
    assert "floating IP 203.0.113." in out and "key pair appliance-key" in out
    cloud = fake.cloud
    assert not cloud.servers and not cloud.neutron["ports"] and not cloud.neutron["floatingips"]
    assert not cloud.neutron["security-groups"]
    assert list(cloud.keypairs) == ["mine"] and other in cloud.images
    assert not (deploy.STATE_DIR / "appliance.json").exists()
    assert cli.main(["destroy", "--poll", "0.01"]) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_user_data_is_sent_base64_encoded_and_console_gates_readiness(fake):
    fake.cloud.polls_to_active = 0
    assert cli.main(deploy_args()) == 0
    for name, text in fake.cloud.user_data.items():
        assert text.startswith("#cloud-config\n")
        assert base64.b64encode(text.encode())  # what Nova received decoded to valid text
        role = name.removeprefix("appliance-")
        assert f"appliance {role}: cloud-init finished" in yaml.safe_load(text)["final_message"]


def test_health_checks_talk_to_real_sockets():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert readiness.tcp_open("127.0.0.1", port)
    assert not readiness.tcp_open("127.0.0.1", port)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert readiness.http_ok(f"{base}/healthz")
        assert not readiness.http_ok(f"{base}/other")
    finally:
        server.shutdown()
        server.server_close()
    assert readiness.health_check("producer", "10.0.0.1") is None


def test_wait_until_times_out_with_the_reason():
    with pytest.raises(TimeoutError, match="kafka: its service port: not after 0 s"):
        readiness.wait_until("kafka: its service port", lambda: False, 0.05, 0.01)


def test_config_errors_are_config_errors():
    with pytest.raises(ConfigError):
        deploy.pairs(["producer"], "--image")
