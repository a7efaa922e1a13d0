#!/bin/sh
# Before removal (not upgrade): stop the agent (a drain) and disable it.
# dpkg passes "remove"; rpm passes the number of versions left, 0 on removal.
set -e
case "$1" in
remove | 0)
	if [ -d /run/systemd/system ]; then
		systemctl disable --now forge-agent.service >/dev/null 2>&1 || true
	fi
	;;
esac
exit 0
