# mailgate: `make run` starts the local stack, `make test` runs every check.
# Both set up what they need on first use (.venv, node_modules).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run relay test lint setup clean poison replay purge soak bench publish \
	client clients client-features client-disable client-enable client-rotate

run: setup local.settings.json
	$(BIN)/python -m devstack

# The SMTP relay on 127.0.0.1:2525 for apps that only speak SMTP, submitting to `make run`'s
# gateway (MAILGATE_URL); see docs/relay.md. RELAY_ARGS="--help" lists its options.
relay: setup
	$(BIN)/mailgate-relay $(RELAY_ARGS)

test: setup lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

setup: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt relay/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "mailgate needs Python 3.10 or newer (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Not part of `make test`: 2,000 messages, transient faults and two host SIGKILLs.
soak: setup
	$(BIN)/python -m bench.soak

# Not part of `make test`: the gateway against its baselines and ceilings (about 4 minutes);
# prints one table and writes it to docs/performance.md. BENCH_ARGS="--help" lists the options.
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

# The operator commands below print a table; FORMAT=json prints the JSON that scripts read.
ADMIN_FORMAT = $(if $(FORMAT),--format "$(FORMAT)")

# The poison queue, for operators: list, replay (IDS="id ..." or ALL=1), purge (also CONFIRM=<queue>).
poison: setup
	$(BIN)/python -m admin list $(ADMIN_FORMAT)

replay: setup
	$(BIN)/python -m admin replay $(if $(ALL),--all) $(IDS) $(ADMIN_FORMAT)

purge: setup
	$(BIN)/python -m admin purge $(if $(ALL),--all) $(IDS) $(if $(CONFIRM),--confirm $(CONFIRM)) $(ADMIN_FORMAT)

# Clients, the apps allowed to send. `make client` and `make client-rotate` print the key on
# their last line; it is shown only then.
client: setup
	@test -n "$(NAME)" -a -n "$(SENDERS)" || { echo "usage: make client NAME=<name> SENDERS=<addresses and @domains> [RATE=<emails per minute>] [FEATURES=<feature,...>]" >&2; exit 2; }
	@$(BIN)/python -m admin client create "$(NAME)" --senders "$(SENDERS)" $(if $(RATE),--rate "$(RATE)") $(if $(FEATURES),--features "$(FEATURES)") $(ADMIN_FORMAT)

clients: setup
	@$(BIN)/python -m admin client list $(ADMIN_FORMAT)

# Replaces the client's features: FEATURES=none takes them all away.
client-features: setup
	@test -n "$(NAME)" -a -n "$(FEATURES)" || { echo "usage: make client-features NAME=<name> FEATURES=<feature,...|none>" >&2; exit 2; }
	@$(BIN)/python -m admin client features "$(NAME)" "$(FEATURES)" $(ADMIN_FORMAT)

client-disable client-enable client-rotate: setup
	@test -n "$(NAME)" || { echo "usage: make $@ NAME=<name>" >&2; exit 2; }
	@$(BIN)/python -m admin client $(subst client-,,$@) "$(NAME)" $(ADMIN_FORMAT)

# Deploy the code to an existing Function App (remote build from requirements.txt; .funcignore
# keeps tests and tooling out). `azd up` does this too; see docs/deploy.md.
publish:
	@test -n "$(APP)" || { echo "usage: make publish APP=<function app name> (azd: azd env get-value AZURE_FUNCTION_APP_NAME)" >&2; exit 2; }
	@command -v func >/dev/null 2>&1 || { echo "make publish needs Azure Functions Core Tools (func) on PATH: https://learn.microsoft.com/azure/azure-functions/functions-run-local" >&2; exit 2; }
	func azure functionapp publish "$(APP)"

# Core Tools reads local.settings.json; start from the example the first time.
local.settings.json:
	cp local.settings.example.json $@

clean:
	rm -rf $(VENV) node_modules .devstack .pytest_cache .mypy_cache .ruff_cache
