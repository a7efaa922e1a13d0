//go:build windows

package service

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/windows"
	"golang.org/x/sys/windows/registry"
	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"
	"golang.org/x/sys/windows/svc/mgr"
)

// Windows paths, under %ProgramData%: the token in forge\, the identity in
// forge-agent\. Both directories are readable by SYSTEM and Administrators only.
func programData() string {
	if d := os.Getenv("ProgramData"); d != "" {
		return d
	}
	return `C:\ProgramData`
}

func winConfigDir() string { return filepath.Join(programData(), "forge") }
func winTokenFile() string { return filepath.Join(winConfigDir(), "enroll-token") }
func winStateDir() string  { return filepath.Join(programData(), Name) }

// ownerOnly is the DACL of those directories and what they hold: full control
// for SYSTEM (the service) and Administrators, nothing for anyone else; not
// inherited from %ProgramData%, which lets every user read.
const ownerOnly = "D:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"

// stopWait bounds the wait for a stopping service: its drain.
const stopWait = 2 * time.Minute

// Install creates (or updates) the forge-agent service: automatic start, run as
// LocalSystem, its configuration as the service's environment (the registry's
// Environment value), restarted by the service manager when it fails, logging
// to the event log. Then, unless NoStart, it (re)starts it; a running one drains
// first.
func Install(c Config) error {
	if c.Root != "" {
		return errors.New("--root is not supported on Windows")
	}
	for _, d := range []string{winConfigDir(), winStateDir()} {
		if err := secureDir(d); err != nil {
			return err
		}
	}
	if c.EnrollToken != "" {
		if err := os.WriteFile(winTokenFile(), []byte(c.EnrollToken+"\r\n"), 0o600); err != nil {
			return err
		}
	} else if _, err := os.Stat(winTokenFile()); errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(winStateDir(), "identity.json")); err != nil {
			return fmt.Errorf("no enrollment token: give --enroll-token or --enroll-token-file (this machine has no %s and no identity in %s)", winTokenFile(), winStateDir())
		}
	}
	m, err := mgr.Connect()
	if err != nil {
		return fmt.Errorf("service manager: %w (run as Administrator)", err)
	}
	defer m.Disconnect()
	cfg := mgr.Config{
		DisplayName:      "forge agent",
		Description:      "Runs tasks from a forge server. It dials out and opens no port.",
		StartType:        mgr.StartAutomatic,
		DelayedAutoStart: true,
	}
	s, err := m.OpenService(Name)
	if err == nil {
		if err := stopService(s); err != nil {
			s.Close()
			return err
		}
		old, err := s.Config()
		if err == nil {
			cfg.ServiceType, cfg.ErrorControl = old.ServiceType, old.ErrorControl
			cfg.BinaryPathName = syscall.EscapeArg(c.Exe) + " agent" // as CreateService writes it
			err = s.UpdateConfig(cfg)
		}
		if err != nil {
			s.Close()
			return fmt.Errorf("update service: %w", err)
		}
	} else {
		if s, err = m.CreateService(Name, c.Exe, cfg, "agent"); err != nil {
			return fmt.Errorf("create service: %w", err)
		}
	}
	defer s.Close()
	restart := mgr.RecoveryAction{Type: mgr.ServiceRestart, Delay: 5 * time.Second}
	if err := s.SetRecoveryActions([]mgr.RecoveryAction{restart, restart, restart}, uint32((24 * time.Hour).Seconds())); err != nil {
		return fmt.Errorf("recovery actions: %w", err)
	}
	// An exit with a non-zero code (a lost state dir, say) counts as a failure
	// too, not only a crash. A revoked agent stops with code 0: not restarted.
	if err := s.SetRecoveryActionsOnNonCrashFailures(true); err != nil {
		return fmt.Errorf("recovery actions: %w", err)
	}
	if err := setServiceEnv(c.Env); err != nil {
		return err
	}
	if err := eventlog.InstallAsEventCreate(Name, eventlog.Error|eventlog.Warning|eventlog.Info); err != nil && !alreadyExists(err) {
		return fmt.Errorf("event log source: %w", err)
	}
	if c.NoStart {
		return nil
	}
	return s.Start()
}

// Uninstall stops the service (a drain) and deletes it; with purge it also
// removes the token and the agent's identity.
func Uninstall(c Config, purge bool) error {
	m, err := mgr.Connect()
	if err != nil {
		return fmt.Errorf("service manager: %w (run as Administrator)", err)
	}
	defer m.Disconnect()
	if s, err := m.OpenService(Name); err == nil {
		err := stopService(s)
		if err == nil {
			err = s.Delete()
		}
		s.Close()
		if err != nil {
			return err
		}
	}
	eventlog.Remove(Name)
	if purge {
		for _, p := range []string{winTokenFile(), winStateDir()} {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// stopService stops s if it runs and waits for it to stop (its drain).
func stopService(s *mgr.Service) error {
	st, err := s.Query()
	if err != nil {
		return err
	}
	if st.State == svc.Stopped {
		return nil
	}
	if st.State != svc.StopPending {
		if _, err := s.Control(svc.Stop); err != nil {
			return fmt.Errorf("stop service: %w", err)
		}
	}
	for deadline := time.Now().Add(stopWait); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if st, err = s.Query(); err != nil {
			return err
		}
		if st.State == svc.Stopped {
			return nil
		}
	}
	return fmt.Errorf("service %s did not stop within %v", Name, stopWait)
}

// setServiceEnv stores env as the service's environment, which the service
// manager gives the process on top of the system's.
func setServiceEnv(env map[string]string) error {
	k, err := registry.OpenKey(registry.LOCAL_MACHINE, `SYSTEM\CurrentControlSet\Services\`+Name, registry.SET_VALUE)
	if err != nil {
		return fmt.Errorf("service environment: %w", err)
	}
	defer k.Close()
	all := map[string]string{"FORGE_STATE_DIR": winStateDir(), "FORGE_ENROLL_TOKEN_FILE": winTokenFile()}
	for n, v := range env {
		all[n] = v
	}
	var vals []string
	for _, n := range sortedEnv(all) {
		vals = append(vals, n+"="+all[n])
	}
	if err := k.SetStringsValue("Environment", vals); err != nil {
		return fmt.Errorf("service environment: %w", err)
	}
	return nil
}

// secureDir creates d and gives it (and what it will hold) the ownerOnly DACL.
func secureDir(d string) error {
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}
	sd, err := windows.SecurityDescriptorFromString(ownerOnly)
	if err != nil {
		return err
	}
	dacl, _, err := sd.DACL()
	if err != nil {
		return err
	}
	if err := windows.SetNamedSecurityInfo(d, windows.SE_FILE_OBJECT,
		windows.DACL_SECURITY_INFORMATION|windows.PROTECTED_DACL_SECURITY_INFORMATION, nil, nil, dacl, nil); err != nil {
		return fmt.Errorf("restrict %s to SYSTEM and Administrators: %w", d, err)
	}
	return nil
}

// alreadyExists tells whether err says the event log source is there already
// (eventlog.InstallAsEventCreate says so in words).
func alreadyExists(err error) bool {
	return errors.Is(err, windows.ERROR_ALREADY_EXISTS) || strings.Contains(err.Error(), "already exists")
}
