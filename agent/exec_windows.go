//go:build windows

package agent

import (
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"unsafe"

	"golang.org/x/sys/windows"
)

// job is a Job Object holding an exec command and everything it starts.
// Processes cannot leave it (no breakaway is allowed), and it is made with
// KILL_ON_JOB_CLOSE: if the agent dies, Windows closes its handle and ends the
// whole tree at once; the record in the state dir covers the rest.
type job struct {
	h   windows.Handle
	pid int // the command's process: the root of its console process group
}

// Job access rights (winnt.h) for reopening a recorded job by name.
const (
	jobObjectQuery     = 0x0004
	jobObjectTerminate = 0x0008
)

var (
	kernel32          = windows.NewLazySystemDLL("kernel32.dll")
	procOpenJobObject = kernel32.NewProc("OpenJobObjectW")
)

// startTree starts cmd suspended in a console process group of its own, puts
// it in a new job, then lets it run: it cannot start a child outside the job.
func startTree(cmd *exec.Cmd) (processTree, error) {
	// CREATE_NEW_PROCESS_GROUP makes the command the root of a console process
	// group, so a Ctrl-Break can be sent to it and its children only.
	cmd.SysProcAttr = &syscall.SysProcAttr{
		CreationFlags: windows.CREATE_NEW_PROCESS_GROUP | windows.CREATE_SUSPENDED,
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	pid := cmd.Process.Pid
	j, err := newJob(pid)
	if err == nil {
		err = resumeProcess(pid)
		if err != nil {
			j.kill()
			j.release()
		}
	}
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
	return j, nil
}

// newJob makes the job of process pid, named after the process and its start,
// and puts the process in it.
func newJob(pid int) (*job, error) {
	p, err := windows.OpenProcess(windows.PROCESS_SET_QUOTA|windows.PROCESS_TERMINATE|windows.PROCESS_QUERY_LIMITED_INFORMATION, false, uint32(pid))
	if err != nil {
		return nil, fmt.Errorf("open process %d: %w", pid, err)
	}
	defer windows.CloseHandle(p)
	name, err := windows.UTF16PtrFromString(jobName(pid, processCreated(p)))
	if err != nil {
		return nil, err
	}
	h, err := windows.CreateJobObject(nil, name)
	if err != nil {
		return nil, fmt.Errorf("create job object: %w", err)
	}
	info := windows.JOBOBJECT_EXTENDED_LIMIT_INFORMATION{}
	info.BasicLimitInformation.LimitFlags = windows.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
	if _, err := windows.SetInformationJobObject(h, windows.JobObjectExtendedLimitInformation,
		uintptr(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info))); err != nil {
		windows.CloseHandle(h)
		return nil, fmt.Errorf("set job limits: %w", err)
	}
	if err := windows.AssignProcessToJobObject(h, p); err != nil {
		windows.CloseHandle(h)
		return nil, fmt.Errorf("assign process to job: %w", err)
	}
	return &job{h: h, pid: pid}, nil
}

// resumeProcess resumes the threads of process pid, started suspended (it has
// one: its main thread).
func resumeProcess(pid int) error {
	snap, err := windows.CreateToolhelp32Snapshot(windows.TH32CS_SNAPTHREAD, 0)
	if err != nil {
		return fmt.Errorf("thread snapshot: %w", err)
	}
	defer windows.CloseHandle(snap)
	te := windows.ThreadEntry32{Size: uint32(unsafe.Sizeof(windows.ThreadEntry32{}))}
	resumed := 0
	for err = windows.Thread32First(snap, &te); err == nil; err = windows.Thread32Next(snap, &te) {
		if te.OwnerProcessID != uint32(pid) {
			continue
		}
		th, err := windows.OpenThread(windows.THREAD_SUSPEND_RESUME, false, te.ThreadID)
		if err != nil {
			return fmt.Errorf("open thread %d: %w", te.ThreadID, err)
		}
		_, err = windows.ResumeThread(th)
		windows.CloseHandle(th)
		if err != nil {
			return fmt.Errorf("resume thread %d: %w", te.ThreadID, err)
		}
		resumed++
	}
	if resumed == 0 {
		return errors.New("no thread of the new process to resume")
	}
	return nil
}

func (j *job) id() int { return j.pid }

// interrupt sends a Ctrl-Break to the command's console process group. It
// reaches the command only when the agent shares its console (the service
// allocates one for that); otherwise it fails, and the job is terminated.
func (j *job) interrupt() bool {
	return windows.GenerateConsoleCtrlEvent(windows.CTRL_BREAK_EVENT, uint32(j.pid)) == nil
}

func (j *job) kill() { windows.TerminateJobObject(j.h, jobKilledCode) }

// gone tells whether no process of the job is running; one whose state cannot
// be read counts as running, so callers escalate.
func (j *job) gone() bool {
	var info jobAccounting
	err := windows.QueryInformationJobObject(j.h, windows.JobObjectBasicAccountingInformation,
		uintptr(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info)), nil)
	return err == nil && info.ActiveProcesses == 0
}

func (j *job) release() {
	if j.h != 0 {
		windows.CloseHandle(j.h)
		j.h = 0
	}
}

// jobAccounting is JOBOBJECT_BASIC_ACCOUNTING_INFORMATION (winnt.h).
type jobAccounting struct {
	TotalUserTime             int64
	TotalKernelTime           int64
	ThisPeriodTotalUserTime   int64
	ThisPeriodTotalKernelTime int64
	TotalPageFaultCount       uint32
	TotalProcesses            uint32
	ActiveProcesses           uint32
	TotalTerminatedProcesses  uint32
}

func treeName(t processTree) string { return fmt.Sprintf("the job object of process %d", t.id()) }

// exitStatus returns the code to report for a command that exited with e.
func exitStatus(e *exec.ExitError) (int, error) {
	return windowsExitStatus(uint32(e.ExitCode()))
}

// processCreated returns the creation time of process p as a FILETIME, or 0.
func processCreated(p windows.Handle) uint64 {
	var created, exited, kernel, user windows.Filetime
	if windows.GetProcessTimes(p, &created, &exited, &kernel, &user) != nil {
		return 0
	}
	return uint64(created.HighDateTime)<<32 | uint64(created.LowDateTime)
}

// openJob opens the job named name; ok is false when no such job exists.
func openJob(name string) (windows.Handle, bool) {
	p, err := windows.UTF16PtrFromString(name)
	if err != nil {
		return 0, false
	}
	r, _, _ := procOpenJobObject.Call(jobObjectQuery|jobObjectTerminate, 0, uintptr(unsafe.Pointer(p)))
	return windows.Handle(r), r != 0
}
