# The two commands a newcomer needs (see README.md); everything else is in deploy/.
.PHONY: run test lint stack-up stack-down bench

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
