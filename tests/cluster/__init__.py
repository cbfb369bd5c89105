"""Broker loss under load on the 3-node Kafka cluster (`make test-cluster`)."""
