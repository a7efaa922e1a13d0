package agent

import (
	"bytes"
	"os"
	"strconv"
	"strings"
)

// procStat returns the state, process group and start time of process pid from
// /proc/<pid>/stat.
func procStat(pid string) (state byte, pgrp int, start uint64, ok bool) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	// The command name (field 2) is in parentheses and may hold anything; the
	// fields after the last ')' are plain: state ppid pgrp session tty tpgid flags
	// minflt cminflt majflt cmajflt utime stime cutime cstime priority nice
	// num_threads itrealvalue starttime ...
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || len(f[0]) == 0 {
		return 0, 0, 0, false
	}
	pgrp, err = strconv.Atoi(f[2])
	if err != nil {
		return 0, 0, 0, false
	}
	start, _ = strconv.ParseUint(f[19], 10, 64)
	return f[0][0], pgrp, start, true
}

// groupHasLive tells whether a process of group pgid is alive (not a zombie).
func groupHasLive(pgid int) bool {
	d, err := os.Open("/proc")
	if err != nil {
		return true // cannot tell: assume alive, so callers escalate
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	for _, name := range names {
		if name == "" || name[0] < '0' || name[0] > '9' {
			continue
		}
		state, pgrp, _, ok := procStat(name)
		if ok && pgrp == pgid && state != 'Z' && state != 'X' {
			return true
		}
	}
	return false
}

// procStartTime returns when process pid started (clock ticks since boot), or 0.
func procStartTime(pid int) uint64 {
	_, _, start, _ := procStat(strconv.Itoa(pid))
	return start
}

// bootID returns the kernel's id of this boot.
func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// ownGroup tells whether recorded group r can still be ours. While any process is
// in a group, its number is not reused, so a group without its leader is ours; a
// leader with another start time means the number was reused after our group ended.
func ownGroup(r groupRecord) bool {
	_, pgrp, start, ok := procStat(strconv.Itoa(r.Pgid))
	if !ok {
		return true // leader gone; members, if any, are ours
	}
	return r.Start == 0 || (start == r.Start && pgrp == r.Pgid)
}
