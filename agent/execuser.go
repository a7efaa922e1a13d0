package agent

// ExecUser is a user exec commands run as instead of the agent's own (see
// WithExecUser). Make one with LookupExecUser.
type ExecUser struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups
	Home   string
}

// WithExecUser runs every command as u rather than as the agent's user: its uid,
// gid and groups, with HOME, USER and LOGNAME set to its own. The agent must be
// allowed to switch users (root on Unix). A command then cannot read what only
// the agent's user can: the agent's state dir (its token), its token files, or
// /proc/<agent>/environ; nor signal or trace the agent. Not available on Windows.
func WithExecUser(u ExecUser) ExecOption {
	return func(c *execConfig) { c.user = &u }
}
