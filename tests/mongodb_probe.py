"""A script that tries MongoDB as a neighbour would, with no login and with a wrong password (and,
where the server speaks TLS, without TLS), and prints what the server answered: run inside a
container of the deployment (its Python has pymongo), so it reaches MongoDB by the same network
path as the consumers."""

from __future__ import annotations

# 13: Unauthorized (no login); 18: AuthenticationFailed (a wrong password).
EXPECTED = ["refused 13", "refused 18"]
# A TLS-only server: a client that does not speak TLS gets no server at all.
EXPECTED_TLS = [*EXPECTED, "refused without TLS"]


def refusal_script(host: str, port: int = 27017, tls_ca_file: str | None = None) -> str:
    """``tls_ca_file``: the server speaks TLS only, with a certificate from that CA (a path in
    the container)."""
    tls = f"&tls=true&tlsCAFile={tls_ca_file}" if tls_ca_file else ""
    script = (
        "from pymongo import MongoClient\n"
        "from pymongo.errors import OperationFailure, ServerSelectionTimeoutError\n"
        f"for uri in ('mongodb://{host}:{port}/?directConnection=true{tls}', "
        f"'mongodb://appliance:wrong@{host}:{port}/?authSource=admin{tls}'):\n"
        "    try:\n"
        "        MongoClient(uri, serverSelectionTimeoutMS=10000).iot.images.insert_one({})\n"
        "        print('accepted')\n"
        "    except OperationFailure as exc:\n"
        "        print('refused', exc.code)\n"
    )
    if tls_ca_file:
        script += (
            "try:\n"
            f"    MongoClient('mongodb://{host}:{port}/?directConnection=true',\n"
            "                serverSelectionTimeoutMS=5000).admin.command('ping')\n"
            "    print('accepted without TLS')\n"
            "except ServerSelectionTimeoutError:\n"
            "    print('refused without TLS')\n"
        )
    return script
