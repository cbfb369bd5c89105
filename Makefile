# The two commands: `make run` (everything, foreground) and `make test` (the whole suite against the
# real stack). Both set up what is missing: Python deps (uv), Maven downloads, the native stack.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
# Helm, built from the Go module proxy (the charts' lint/render checks need it).
HELM_VERSION := v3.22.0
TOOLS := .tools
UV := $(TOOLS)/bin/uv
PYTEST := $(UV) run --frozen --no-sync pytest
# promtool (Debian's `prometheus` package, unpacked, never installed) checks and unit-tests the
# alert rules; the test file names the rules file it tests.
PROMTOOL := $(TOOLS)/bin/promtool
ALERT_RULES := deploy/prometheus/lagmon-alerts.yml
ALERT_RULE_TESTS := deploy/prometheus/lagmon-alerts.test.yml
# @asyncapi/parser (validates docs/asyncapi.yaml), pinned by scripts/asyncapi/package-lock.json.
ASYNCAPI_PARSER := $(TOOLS)/asyncapi/.installed
STACK := deploy/local/stack.sh
# `make test` exports the stack's addresses (written by `make up`) to the tests.
STACK_ENV = set -a; . .state/stack.env; set +a

.PHONY: help install up down status clean run test test-unit test-integration test-e2e test-cluster topics lint fmt schemas author lag bench-pipeline chaos alerts

# Each team applies the topics it owns (services/<svc>/topics.yaml) through its own CLI; a
# service made by `make new-consumer` is one of them as soon as it exists.
TOPIC_OWNERS := publisher $(filter-out publisher,$(patsubst services/%/topics.yaml,%,$(wildcard services/*/topics.yaml)))
APPLY_TOPICS = $(STACK_ENV); for svc in $(TOPIC_OWNERS); do \
	$(UV) run --frozen --no-sync python -m $$svc topics apply $(1) || exit $$?; done

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

# The bench group (FastStream, the peer of `make bench`) is installed too: lint type-checks bench/.
.venv/.synced: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
	$(UV) sync --frozen --all-packages --group bench
	@touch $@

install: .venv/.synced ## install Python deps into .venv (uv, one lockfile)

.PHONY: helm k8s-generate lint-k8s
helm: ## build the pinned Helm into .tools/bin from the Go module proxy (once; ~4 min, then cached)
	scripts/install-helm.sh $(HELM_VERSION)

k8s-generate: install ## regenerate deploy/k8s's KafkaTopics and the lagmon chart's alert rules from their sources
	$(UV) run --frozen --no-sync python deploy/k8s/generate.py

lint-k8s: install helm ## offline: generated files current, helm lint + template + schema/CRD validation of every chart and deploy/k8s
	$(UV) run --frozen --no-sync python deploy/k8s/generate.py --check
	$(UV) run --frozen --no-sync python -m tests.deploy.k8s_check

up: install ## start Kafka (KAFKA_NODES=3: a 3-node cluster), PostgreSQL, Elasticsearch; apply the topics files
	$(STACK) up
	$(call APPLY_TOPICS)

topics: install ## reconcile the running Kafka with every team's topics file (ARGS=--dry-run to look first)
	$(call APPLY_TOPICS,$(ARGS))

down: ## stop exactly what `make up` started
	$(STACK) down

status: ## show which stack processes run
	$(STACK) status

clean: down ## stop the stack and wipe its state (data, logs, downloads copied from Maven)
	$(STACK) clean
	rm -rf test-artifacts

run: up ## run the whole system in the foreground (Ctrl-C stops the services)
	$(STACK_ENV); scripts/run-services.sh

# SERVICE=counter (publisher, indexer, lagmon): only that team's own tests (services/<svc>/tests).
SERVICES := $(patsubst services/%/,%,$(wildcard services/*/))
TEST_PATHS = $(if $(SERVICE),services/$(SERVICE)/tests)
.PHONY: check-service
check-service:
	@[ -z "$(SERVICE)" ] || [ -d "services/$(SERVICE)/tests" ] || { echo "SERVICE must be one of: $(SERVICES) (got '$(SERVICE)')" >&2; exit 2; }

test: check-service up helm $(ASYNCAPI_PARSER) ## the whole suite (unit, integration, e2e) against the real stack; SERVICE=counter: one team's tests
	scripts/ensure-chromium.sh
	scripts/ensure-promtool.sh
	$(STACK_ENV); $(PYTEST) $(TEST_PATHS) $(ARGS)

test-unit: install helm $(ASYNCAPI_PARSER) ## fast tests that need no server
	$(PYTEST) -m "not integration and not e2e" $(ARGS)

test-integration: up ## tests against the real Kafka / PostgreSQL / Elasticsearch
	$(STACK_ENV); $(PYTEST) -m integration $(ARGS)

test-e2e: up ## the services as processes, through HTTP, against the real stack
	$(STACK_ENV); $(PYTEST) -m e2e $(ARGS)

# KAFKA_NODES defaults to 3 here; with a 1-node stack running, `make down` first (stack.sh says so).
test-cluster: install ## broker loss under load on a 3-node Kafka (marker `cluster`; starts it if needed)
	KAFKA_NODES=$${KAFKA_NODES:-3} $(MAKE) --no-print-directory up
	$(STACK_ENV); BLOG_REQUIRE_CLUSTER=1 $(PYTEST) -m cluster $(ARGS)

# KAFKA_AUTH=scram: its own Kafka state (one node); with a plaintext stack running, `make down` first.
.PHONY: test-acl
test-acl: install ## Kafka least privilege: each service's own SCRAM user and ACLs (marker acl; starts KAFKA_AUTH=scram if needed)
	KAFKA_AUTH=scram $(MAKE) --no-print-directory up
	$(STACK_ENV); BLOG_REQUIRE_ACL=1 $(PYTEST) -m acl -v -s $(ARGS)

lint: install alerts ## ruff + mypy strict + schema drift check + alert rules (promtool) + the charts' and deploy/k8s's checks
	$(UV) run --frozen --no-sync ruff check .
	$(UV) run --frozen --no-sync ruff format --check .
	$(UV) run --frozen --no-sync mypy libs services tests bench deploy/k8s
	$(UV) run --frozen --no-sync python -m blog_events.schemas --check
	$(MAKE) --no-print-directory lint-asyncapi
	$(MAKE) --no-print-directory lint-k8s

alerts: ## promtool: check the alert rules and run their unit tests (installs promtool into .tools/)
	scripts/ensure-promtool.sh
	$(PROMTOOL) check rules $(ALERT_RULES)
	$(PROMTOOL) test rules $(ALERT_RULE_TESTS)

fmt: install ## format and autofix
	$(UV) run --frozen --no-sync ruff format .
	$(UV) run --frozen --no-sync ruff check --fix .

schemas: install ## regenerate the committed JSON Schemas of the events
	$(UV) run --frozen --no-sync python -m blog_events.schemas

author: up ## create an author and print its API token: make author NAME=alice
	$(STACK_ENV); scripts/create-author.sh "$(NAME)"

lag: up ## consumer lag per group and partition, refreshed every 5 s (ARGS=--json for JSON)
	$(STACK_ENV); . scripts/service-env.sh; $(UV) run --frozen --no-sync python -m lagmon status --watch 5 $(ARGS)

bench-pipeline: up ## POST latency and POST->counted / POST->searchable, p50/p99 (ARGS="--posts 300 --rate 30")
	$(STACK_ENV); $(UV) run --frozen --no-sync python bench/pipeline_latency.py $(ARGS)

N ?= 2000
chaos: up ## kill -9 services (and, with KAFKA_NODES=3, brokers) and restart Kafka under load, then check exactly-once (make chaos N=2000)
	$(STACK_ENV); $(UV) run --frozen --no-sync python -m tests.chaos.chaos_run --writes $(N)

# Each group's redrive moves its own dead letters to its own retry topic, which no other group
# reads (SERVICE=counter or indexer: that group only; default both).
REDRIVE_SERVICES = $(or $(SERVICE),counter indexer)
.PHONY: redrive
redrive: up ## after a fix, put a group's dead letters back to that group only (SERVICE=counter ARGS="--dry-run --max-attempts 3")
	$(STACK_ENV); . scripts/service-env.sh; for svc in $(REDRIVE_SERVICES); do \
		$(UV) run --frozen --no-sync python -m $$svc redrive $(ARGS) || exit $$?; done

# The read models against the log, and rebuilt from it while everything runs (README: Rebuilding
# and checking the read models). ARGS=--rollback / --prune for the rebuilds.
.PHONY: verify rebuild-index rebuild-counter
verify: up ## compare the counter's tables and the search index with blog-events (exit 1 on a difference)
	$(STACK_ENV); . scripts/service-env.sh; $(UV) run --frozen --no-sync python -m counter verify && \
	$(UV) run --frozen --no-sync python -m indexer verify

rebuild-index: up ## build the next index from blog-events and swap the alias, zero downtime (ARGS=--rollback|--prune)
	$(STACK_ENV); . scripts/service-env.sh; $(UV) run --frozen --no-sync python -m indexer rebuild $(ARGS)

rebuild-counter: up ## rebuild the counter's tables from blog-events and swap them in (ARGS=--rollback|--prune)
	$(STACK_ENV); . scripts/service-env.sh; $(UV) run --frozen --no-sync python -m counter rebuild $(ARGS)

SIZE ?= full
.PHONY: bench
bench: up ## the speed measures beside their references, table + bench/results/bench.json (SIZE=small|medium|full, ARGS=--profile)
	$(STACK_ENV); $(UV) run --frozen --no-sync python -m bench.run --size $(SIZE) $(ARGS)

.PHONY: new-consumer
new-consumer: install ## a new consumer group service from templates/consumer/: make new-consumer NAME=tagtrends
	@test -n "$(NAME)" || { echo "usage: make new-consumer NAME=<lowercase name>" >&2; exit 2; }
	$(UV) run --frozen --no-sync python scripts/new_consumer.py "$(NAME)" $(ARGS)
	$(UV) sync --frozen --all-packages --group bench && touch .venv/.synced

$(ASYNCAPI_PARSER): scripts/asyncapi/package.json scripts/asyncapi/package-lock.json
	mkdir -p $(TOOLS)/asyncapi
	cp scripts/asyncapi/package.json scripts/asyncapi/package-lock.json $(TOOLS)/asyncapi/
	cd $(TOOLS)/asyncapi && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: asyncapi asyncapi-parser lint-asyncapi
asyncapi-parser: $(ASYNCAPI_PARSER) ## install the pinned @asyncapi/parser into .tools (npm ci; Node 20)

asyncapi: install $(ASYNCAPI_PARSER) ## regenerate docs/asyncapi.yaml from the JSON Schemas and the topics files, and validate it
	$(UV) run --frozen --no-sync python scripts/asyncapi/generate.py --validate

lint-asyncapi: install $(ASYNCAPI_PARSER) ## docs/asyncapi.yaml current, and valid by @asyncapi/parser's diagnostics
	$(UV) run --frozen --no-sync python scripts/asyncapi/generate.py --check --validate
