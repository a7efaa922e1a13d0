package agent

import (
	"strings"
	"testing"
)

// The computation behind exec on Windows, tested on every system: job names
// are unique per process and start, and exit codes read as cmd.exe shows them.
func TestJobName(t *testing.T) {
	t.Parallel()
	a := jobName(4242, 133800000000000000)
	if a != "forge-exec-4242-133800000000000000" {
		t.Fatalf("jobName = %q", a)
	}
	if b := jobName(4242, 133800000000000001); b == a {
		t.Fatalf("a reused pid with another start time gets the same job name %q", b)
	}
	if strings.ContainsAny(a, `\/ `) {
		t.Fatalf("job name %q holds a character that would put it in another namespace", a)
	}
}

func TestWindowsExitStatus(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		code uint32
		want int
		why  string
	}{
		{0, 0, "exit status 0"},
		{3, 3, "exit status 3"},
		{jobKilledCode, 137, "exit status 137"},
		{statusControlCExit, -1073741510, "ended by Ctrl-Break (exit status 0xC000013A)"},
		{0xC0000005, -1073741819, "exit status 0xC0000005"},
		{0xFFFFFFFF, -1, "exit status 0xFFFFFFFF"},
	} {
		got, why := windowsExitStatus(c.code)
		if got != c.want || why.Error() != c.why {
			t.Errorf("windowsExitStatus(%#x) = %d, %q; want %d, %q", c.code, got, why, c.want, c.why)
		}
	}
}
