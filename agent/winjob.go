package agent

import "fmt"

// The parts of exec on Windows that are plain computation live here, built on
// every system, so they are tested where the tests run; exec_windows.go holds
// the system calls.

// jobKilledCode is the exit code TerminateJobObject gives every process of a
// job the agent ends: 137, what a shell shows for SIGKILL on Unix, so a killed
// command reads the same whatever the agent's system.
const jobKilledCode = 137

// statusControlCExit is the NTSTATUS a console process ends with when a Ctrl-C
// or Ctrl-Break it did not handle ends it.
const statusControlCExit = 0xC000013A

// jobName names the Job Object holding an exec command started as process pid
// at created (its creation time, a FILETIME). The pair is unique on a machine
// until it reboots, and the state dir records both, so the next start of an
// agent killed meanwhile can open this job, and only this one, to end it.
func jobName(pid int, created uint64) string {
	return fmt.Sprintf("forge-exec-%d-%d", pid, created)
}

// windowsExitStatus returns the exit code to report for a Windows process that
// exited with code, and words for it. Codes are DWORDs; they are reported as
// 32-bit signed numbers, as cmd.exe's %ERRORLEVEL% shows them, so an NTSTATUS
// such as 0xC0000005 (access violation) is negative, and named in hex.
func windowsExitStatus(code uint32) (int, error) {
	n := int(int32(code))
	switch {
	case code == statusControlCExit:
		return n, fmt.Errorf("ended by Ctrl-Break (exit status 0x%08X)", code)
	case code >= 0x80000000:
		return n, fmt.Errorf("exit status 0x%08X", code)
	}
	return n, fmt.Errorf("exit status %d", code)
}
