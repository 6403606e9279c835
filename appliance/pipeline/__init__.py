"""The pipeline's runtime: the cameras (producer), the DB and inference consumers, their Kafka
clients, and the wait for peers at start-up. The images run these; tooling lives in ``ops/``."""
