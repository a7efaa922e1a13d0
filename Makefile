BUF := go tool -modfile=tools/go.mod buf

.PHONY: generate lint test check release
generate:
	$(BUF) generate
	go generate ./store/...
	cd examples/typescript && (test -d node_modules || npm ci) && npm run generate

lint:
	$(BUF) lint
	$(BUF) format -d --exit-code

test:
	./scripts/test

check: lint test

# Every target's binary, the .deb and .rpm packages, and SHA256SUMS, in dist/.
release:
	./scripts/release
