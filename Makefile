# The two commands a newcomer needs (see README.md); everything else is in deploy/.
.PHONY: run test lint stack-up stack-down bench chaos

run:
	bash deploy/run.sh

test:
	bash deploy/test.sh

lint:
	bash deploy/test.sh --lint-only

stack-up:
	bash deploy/stack.sh up

stack-down:
	bash deploy/stack.sh down

# Chaos runs (tests/chaos): 2 ingest workers, 2 segmenters and the API on a private 3-broker
# KRaft cluster, faults every 10 to 30 s, each run checked. `make chaos SEED=n` replays run n.
SEED ?=
RUNS ?= $(if $(SEED),1,5)
CHAOS_SECONDS ?= 300
chaos:
	bash deploy/venv.sh
	.venv/bin/python -m tests.chaos --seed $(or $(SEED),1) --runs $(RUNS) --seconds $(CHAOS_SECONDS) --cluster 3
