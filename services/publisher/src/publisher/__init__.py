"""The blog publisher: a FastAPI write API whose only durable work per request is one PostgreSQL
transaction (blog row + outbox row); an outbox relay publishes the events to Kafka."""
