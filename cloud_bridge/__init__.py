"""The cloud path: an MQTT <-> SQS bridge with a durable outbox, and the cloud worker behind the queue."""
