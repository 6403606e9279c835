"""IoT image-analytics appliance: simulated cameras, Kafka consumers, a ResNet50 server."""

__version__ = "0.1.0"
