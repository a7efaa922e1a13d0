package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/client"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/termsafe"
)

// Exit codes of forge run (and forge task --follow). When the job has one task
// and its command ran and exited with a code from 1 to 255, that code is the
// exit code instead, as with ssh.
const (
	exitOK          = 0   // every task SUCCEEDED
	exitFailed      = 1   // a task FAILED, TIMED_OUT or was LOST
	exitUsage       = 2   // a bad command line
	exitNotRun      = 3   // none failed, but some were CANCELED or EXPIRED (never picked up)
	exitNoAgent     = 4   // the target matched no agent
	exitError       = 5   // forge could not finish: a server unreachable past --give-up-after, a job gone
	exitRefused     = 6   // the server answered and refused the job (the store full, a limit, a token not allowed)
	exitInterrupted = 130 // Ctrl-C: the job was canceled
)

const runHelp = `forge run: run a command on agents, print what each prints as it prints it, and
wait for every one to end.

The job id comes first, on stderr (so are the progress and the summary: stdout
carries only the commands' stdout). Each line is prefixed by its agent's name
when the job has more than one task; --group prints each agent's output as one
block when it ends instead. On a terminal a live line counts tasks by state;
piped, a plain line says the same every 10 s. A server that cannot be reached
is reported at once and retried for --give-up-after. Ctrl-C cancels the job.

Output is shown as lines, on a terminal and piped alike: a line ended by CR LF
shows ended by its newline; any other CR, and control, bidi and zero-width
characters, show escaped (\r, \x1b) unless --raw; a last line without a
newline is ended with one, so what follows starts on its own line. The output
exactly as sent is in forge task ID --json.

The command starts at "--" or at the first argument that is not a flag; what
follows it is the command's own. argv[0] must be allowed on the agent
(forge agent --allow-exec), exactly as written.

Exit code: with one task, the command's own exit code when it ran; otherwise
  0  every task SUCCEEDED
  1  some task FAILED, TIMED_OUT or was LOST
  2  bad command line
  3  none failed, but some were CANCELED or EXPIRED (never picked up)
  4  the target matched no agent
  5  forge could not finish (server unreachable, job gone)
  6  the server refused the job (the store full, a limit, a token not
     allowed: its reason is printed)
  130 interrupted (the job was canceled)`

func (m *Main) runRun(ctx context.Context, args []string) error {
	f := m.newFlags("run", runHelp)
	f.usage = "forge run [flags] (--agent NAME|ID|GLOB | --selector S | --all) -- CMD ARGS..."
	f.examples = `forge run --all -- uptime
forge run --agent 'web-*' -- /bin/sh -c 'systemctl restart nginx && echo ok'
forge run --selector env=prod --max-concurrency 2 --max-failures 1 -- /usr/local/bin/deploy v42
forge run --agent web-1 --detach -- /usr/bin/apt-get -y upgrade   # prints the job id
forge run --selector role=db --json -- /usr/bin/df -h | jq -r '.tasks[] | .agentName + " " + .output'`
	f.interspersed = false
	cf := f.client()
	agentArg := f.FlagSet.String("agent", "", "run on agents by name, by glob over names (web-*, web-[1-3]) or by id")
	selector := f.FlagSet.String("selector", "", "run on the agents whose labels match, such as env=prod,role in (web,api)")
	all := f.FlagSet.Bool("all", false, "run on every online agent")
	offline := f.FlagSet.Bool("include-offline", false, "with a name, glob, selector or --all: also queue for agents offline now (an agent id always queues)")
	detach := f.FlagSet.Bool("detach", false, "print the job id to stdout and return at once; forge job ID shows it later")
	group := f.FlagSet.Bool("group", false, "print each agent's output as one block when it ends, rather than line by line as printed")
	timeout := f.FlagSet.Duration("timeout", 0, "execution timeout on each agent (0: the server's default, 10m unless it was changed)")
	ttl := f.FlagSet.Duration("delivery-ttl", time.Minute, "how long an agent may take to pick the command up before its task ends EXPIRED")
	maxConc := f.FlagSet.Int("max-concurrency", 0, "run on at most this many agents at once (0: no limit)")
	maxFail := f.FlagSet.Int("max-failures", 0, "start no more once this many tasks FAILED, TIMED_OUT, were LOST or EXPIRED (0: no limit)")
	dir := f.FlagSet.String("dir", "", "working directory on the agent (default: the agent's)")
	var envs []string
	f.FlagSet.Var(&listFlag{vals: &envs}, "env", "K=V to set in the command's environment, repeatable (the agent must allow K with --allow-env)")
	if err := f.parse(args); err != nil {
		return err
	}
	argv := f.Args()
	var target client.Target
	var targets []string
	if *agentArg != "" {
		targets, target = append(targets, "--agent"), client.Agent(*agentArg)
	}
	if *selector != "" {
		targets, target = append(targets, "--selector"), client.Selector(*selector)
	}
	if *all {
		targets, target = append(targets, "--all"), client.All()
	}
	switch {
	case len(targets) == 0:
		for _, a := range argv {
			if t := strings.SplitN(a, "=", 2)[0]; t == "--agent" || t == "--selector" || t == "--all" || t == "-agent" || t == "-selector" || t == "-all" {
				return f.usageError("say where to run it: %s came after the command's first word, and flags after the command belong to it; put %s before it", a, t)
			}
		}
		return f.usageError("say where to run it: --agent NAME|ID|GLOB, --selector S or --all")
	case len(targets) > 1:
		return f.usageError("give one of --agent, --selector and --all, not %s", strings.Join(targets, " and "))
	case len(argv) == 0:
		return f.usageError("give the command to run after --, such as: forge run %s -- uptime", targetText(*agentArg, *selector))
	case *timeout < 0 || *ttl < 0:
		return f.usageError("--timeout and --delivery-ttl take a duration of 0 or more, such as 30s")
	case *maxConc < 0 || *maxFail < 0:
		return f.usageError("--max-concurrency and --max-failures take a number of 0 or more")
	}
	cmd := client.Command{Argv: argv, Dir: *dir}
	for _, kv := range envs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return f.usageError("--env %q: want K=V", kv)
		}
		if cmd.Env == nil {
			cmd.Env = map[string]string{}
		}
		cmd.Env[k] = v
	}
	req := cmd.On(target)
	req.MaxConcurrency, req.MaxFailures, req.IncludeOffline = int32(*maxConc), int32(*maxFail), *offline
	if *timeout > 0 {
		req.Timeout = durationpb.New(*timeout)
	}
	if *ttl > 0 {
		req.DeliveryTtl = durationpb.New(*ttl)
	}

	start := time.Now()
	width, live := m.terminal(m.Stderr)
	scr := &screen{out: m.Stdout, err: m.Stderr, live: live, width: width}
	c, err := m.newClient("run", cf, func(s string) { scr.note("forge run: " + s) })
	if err != nil {
		return err
	}
	d, err := c.Dispatch(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return exitCode(exitInterrupted)
		}
		scr.note(fmt.Sprintf("forge run: %s", m.quote(err)))
		if connect.CodeOf(err) == connect.CodeInvalidArgument {
			// What the server found wrong is the command line's (a bad selector,
			// an empty command …): a usage error, not a failure to finish.
			fmt.Fprintln(m.Stderr, `Run "forge run -h" for help.`)
			return exitCode(exitUsage)
		}
		if refused(err) {
			return exitCode(exitRefused)
		}
		return exitCode(exitError)
	}
	n := len(d.TaskIds)
	if *detach {
		fmt.Fprintln(m.Stdout, d.JobId)
	}
	scr.note(fmt.Sprintf("job %s: %d %s", d.JobId, n, plural(n, "task", "tasks")))
	if n == 0 {
		what := "--agent " + *agentArg
		switch {
		case *selector != "":
			what = "--selector " + *selector
		case *all:
			what = "--all"
		}
		which, hint := "agent", ""
		if !*offline && !isAgentID(*agentArg) {
			which, hint = "online agent", " (forge agents lists them; --include-offline queues for offline ones)"
		}
		scr.note(fmt.Sprintf("forge run: no %s matched %s%s", which, m.quoteText(what), hint))
		return exitCode(exitNoAgent)
	}
	if *detach {
		return nil
	}

	v := newRunView(m, scr, cf.printer(), d, start, *group, *cf.json)
	agentIDs := make([]string, n)
	for i, id := range d.TaskIds {
		agentIDs[i] = client.TaskAgent(id)
	}
	names, _ := c.AgentNames(ctx, agentIDs...) // best effort: ids stand in
	v.setNames(names)

	fctx, stopFollow := context.WithCancel(ctx)
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		if !*cf.json { // --json prints the output with the results
			v.followAll(fctx, c)
		}
	}()
	scr.start(v.status)
	res, werr := c.Wait(ctx, d.JobId, client.OnProgress(v.progress))
	if werr == nil {
		// The output of tasks that just ended may still be on its way.
		select {
		case <-followed:
		case <-time.After(10 * time.Second):
		}
	}
	stopFollow()
	<-followed
	scr.stop()
	v.flush()

	if ctx.Err() != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := c.CancelJob(cctx, d.JobId, "forge run interrupted"); err != nil {
			scr.note(fmt.Sprintf("forge run: interrupted; cancelling job %s failed: %s", d.JobId, m.quote(err)))
		} else {
			scr.note(fmt.Sprintf("forge run: interrupted; job %s canceled", d.JobId))
		}
		return exitCode(exitInterrupted)
	}
	if werr != nil {
		switch {
		case connect.CodeOf(werr) == connect.CodeNotFound:
			scr.note(fmt.Sprintf("forge run: the job is gone from the server: %s", m.quote(aboutID(d.JobId, werr))))
		default:
			scr.note(fmt.Sprintf("forge run: %s\nforge run: job %s goes on without this command: forge job %s shows it, forge cancel --job %s stops it",
				m.quote(werr), d.JobId, d.JobId, d.JobId))
		}
		return exitCode(exitError)
	}
	if *cf.json {
		tasks := make([]any, len(res.Tasks))
		for i, t := range res.Tasks {
			tasks[i] = jsonTask(t, res.Names[t.AgentId])
		}
		if err := m.writeJSON(cf.printer(), map[string]any{"job": jsonObject(res.Job), "tasks": tasks}); err != nil {
			return err
		}
	}
	v.summary(res, time.Since(start))
	return exitCode(runExit(res.Tasks))
}

// refused tells whether err is a server's answer refusing the call, not a
// server that could not be reached or could not answer in time (what the
// client retries until --give-up-after).
func refused(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeAborted, connect.CodeCanceled, connect.CodeUnknown:
		return false
	}
	return true
}

// runExit is forge run's exit code for tasks that ended (see the exit codes).
func runExit(tasks []*forgev1.TaskInfo) int {
	if len(tasks) == 1 {
		t := tasks[0]
		if t.State == forgev1.TaskState_TASK_STATE_FAILED && t.ExitCode > 0 && t.ExitCode < 256 {
			return int(t.ExitCode)
		}
	}
	code := exitOK
	for _, t := range tasks {
		switch t.State {
		case forgev1.TaskState_TASK_STATE_SUCCEEDED:
		case forgev1.TaskState_TASK_STATE_FAILED, forgev1.TaskState_TASK_STATE_TIMED_OUT, forgev1.TaskState_TASK_STATE_LOST:
			return exitFailed
		default: // canceled, expired; pending or running only if the wait was cut short
			code = exitNotRun
		}
	}
	return code
}

// summaryText counts the tasks by state, naming the agents of each state but
// SUCCEEDED when there are few: "1 SUCCEEDED, 1 FAILED (web-2), 1 EXPIRED (web-3)".
func summaryText(counts *forgev1.JobCounts, byState map[forgev1.TaskState][]string) string {
	var parts []string
	for _, s := range stateCounts(counts) {
		if s.N == 0 {
			continue
		}
		part := fmt.Sprintf("%d %s", s.N, stateName(s.State))
		if names := byState[s.State]; s.State != forgev1.TaskState_TASK_STATE_SUCCEEDED && len(names) > 0 {
			sort.Strings(names)
			if len(names) > 5 {
				names = append(names[:5:5], "…")
			}
			part += " (" + strings.Join(names, ", ") + ")"
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, ", ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// quote is an error as forge prints it: escaped, as it may quote what an
// agent or a caller sent.
func (m *Main) quote(err error) string { return termsafe.Line(err.Error()) }

func (m *Main) quoteText(s string) string { return termsafe.Line(s) }

// targetText is the target flag a run was given, with its value, as a
// suggestion in a message shows it.
func targetText(agent, selector string) string {
	switch {
	case agent != "":
		return "--agent " + shellQuote(agent)
	case selector != "":
		return "--selector " + shellQuote(selector)
	}
	return "--all"
}
