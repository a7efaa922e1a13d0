#!/bin/sh
# After removal. A purge (dpkg) also removes the token and the agent's identity:
# installed again, the machine enrolls as a new agent. The user forge stays, as
# files elsewhere may still be its.
set -e
case "$1" in
purge)
	rm -rf /var/lib/forge-agent
	rm -f /etc/forge/enroll-token
	rmdir /etc/forge 2>/dev/null || true
	;;
esac
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
