"""A script that tries MongoDB as a neighbour would, with no login and with a wrong password, and
prints what the server answered: run inside a container of the deployment (its Python has
pymongo), so it reaches MongoDB by the same network path as the consumers."""

from __future__ import annotations

# 13: Unauthorized (no login); 18: AuthenticationFailed (a wrong password).
EXPECTED = ["refused 13", "refused 18"]


def refusal_script(host: str, port: int = 27017) -> str:
    return (
        "from pymongo import MongoClient\n"
        "from pymongo.errors import OperationFailure\n"
        f"for uri in ('mongodb://{host}:{port}', "
        f"'mongodb://appliance:wrong@{host}:{port}/?authSource=admin'):\n"
        "    try:\n"
        "        MongoClient(uri, serverSelectionTimeoutMS=10000).iot.images.insert_one({})\n"
        "        print('accepted')\n"
        "    except OperationFailure as exc:\n"
        "        print('refused', exc.code)\n"
    )
