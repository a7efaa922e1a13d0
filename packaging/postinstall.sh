#!/bin/sh
# After install or upgrade: the service's user, and on upgrade a restart of a
# running agent (it drains with the old binary, then the new one starts).
set -e
if ! getent passwd forge >/dev/null; then
	useradd --system --user-group --home-dir /var/lib/forge-agent --no-create-home \
		--shell /usr/sbin/nologin --comment "forge agent" forge
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	systemctl try-restart forge-agent.service >/dev/null 2>&1 || true
fi
exit 0
