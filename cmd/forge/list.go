package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/client"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/termsafe"
	"github.com/orange-forge/forge/store"
)

func (m *Main) runAgents(ctx context.Context, args []string) error {
	f := m.newFlags("agents", "forge agents: list agents, ordered by name.")
	f.usage = "forge agents [flags]"
	f.examples = "forge agents --status online\nforge agents --agent 'web-*' --json\nforge agents --selector 'env=prod,role in (web,api)'\nforge agents --selector env=staging --wait 3   # before a run, in a script that just started agents"
	cf := f.listClient()
	pattern := f.FlagSet.String("agent", "", "only agents with this id, or whose name matches this name or glob (web-1, web-*, web-[1-3])")
	selector := f.FlagSet.String("selector", "", "only agents whose labels match, such as env=prod,role in (web,api)")
	status := f.FlagSet.String("status", "", "only agents in this status: online, offline or revoked")
	wait := f.FlagSet.Int("wait", 0, "first wait until at least this many of the agents listed are online, for up to a minute or --give-up-after when given (exit 1 if they are not)")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := f.noArgs(); err != nil {
		return err
	}
	if *wait < 0 {
		return f.usageError("--wait %d: want a number of agents, 0 or more", *wait)
	}
	req := &forgev1.ListAgentsRequest{Selector: *selector}
	if *status != "" {
		v, ok := forgev1.AgentStatus_value["AGENT_STATUS_"+strings.ToUpper(*status)]
		if !ok || v == 0 {
			return f.usageError("--status %q: want online, offline or revoked", *status)
		}
		req.Status = forgev1.AgentStatus(v)
	}
	c, err := m.newClient("agents", cf, nil)
	if err != nil {
		return err
	}
	var list []*forgev1.AgentInfo
	switch {
	case *wait > 0:
		bound := *cf.giveUp
		if !f.set("give-up-after") && f.m.getenv(envName("give-up-after")) == "" {
			bound = time.Minute // agents starting up are worth a longer wait than a listing
		}
		if list, err = awaitOnline(ctx, c, req, *pattern, *wait, bound); err != nil {
			return err
		}
	case isAgentID(*pattern):
		if list, err = findAgents(ctx, c, *pattern); err != nil {
			return err
		}
	default:
		req.Name = *pattern
		if list, err = c.Agents(ctx, req); err != nil {
			return err
		}
	}
	slices.SortStableFunc(list, func(a, b *forgev1.AgentInfo) int {
		return strings.Compare(a.Name+"\x00"+a.Id, b.Name+"\x00"+b.Id)
	})
	p := cf.printer()
	if *cf.json {
		out := make([]any, len(list))
		for i, a := range list {
			out[i] = jsonObject(a)
		}
		return m.writeJSON(p, map[string]any{"agents": out})
	}
	if len(list) == 0 {
		fmt.Fprintln(m.Stdout, noneText("agents", "--agent", *pattern, "--selector", *selector, "--status", *status))
		return nil
	}
	// Names are not unique: a name two agents share is marked, so nobody
	// takes two machines for one.
	shared := map[string]int{}
	for _, a := range list {
		shared[a.Name]++
	}
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tSTATUS\tVERSION\tLAST SEEN\tRUNNING\tPENDING\tLABELS")
	dups := 0
	for _, a := range list {
		name := p.Line(a.Name)
		if shared[a.Name] > 1 {
			name += " *"
			dups++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", name, p.Line(a.Id), statusName(a.Status), p.Line(a.Version),
			ago(a.LastSeenAt), len(a.Running), a.Pending, labelsText(p, a.Labels))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if dups > 0 {
		fmt.Fprintf(m.Stderr, "* %d agents share a name with another: --agent NAME reaches all of them; an id reaches one\n", dups)
	}
	return nil
}

// awaitOnline lists the agents req and pattern name until at least n of them
// are online, asking again every 250 ms for up to giveUp (0: until ctx ends):
// an agent started a moment ago registers on its own time, and a script that
// runs a command next must not race it.
func awaitOnline(ctx context.Context, c *client.Client, req *forgev1.ListAgentsRequest, pattern string, n int, giveUp time.Duration) ([]*forgev1.AgentInfo, error) {
	if giveUp > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, giveUp)
		defer cancel()
	}
	if !isAgentID(pattern) {
		req.Name = pattern
	}
	for {
		list, err := c.Agents(ctx, req)
		if err != nil && ctx.Err() == nil {
			return nil, err
		}
		if isAgentID(pattern) {
			list = slices.DeleteFunc(list, func(a *forgev1.AgentInfo) bool { return a.Id != pattern })
		}
		online := 0
		for _, a := range list {
			if a.Status == forgev1.AgentStatus_AGENT_STATUS_ONLINE {
				online++
			}
		}
		if online >= n {
			return list, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("--wait %d: %d of the agents listed are online after %v", n, online, giveUp)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (m *Main) runJobs(ctx context.Context, args []string) error {
	f := m.newFlags("jobs", "forge jobs: list jobs, newest first, with their tasks counted by state.")
	f.usage = "forge jobs [flags]"
	f.examples = "forge jobs\nforge jobs --limit 5 --json"
	cf := f.listClient()
	limit := f.FlagSet.Int("limit", 20, "most jobs to list (0: every job the server keeps)")
	if err := f.parse(args); err != nil {
		return err
	}
	if *limit < 0 {
		return f.usageError("--limit %d: want a number of jobs, 0 or more", *limit)
	}
	if err := f.noArgs(); err != nil {
		return err
	}
	c, err := m.newClient("jobs", cf, nil)
	if err != nil {
		return err
	}
	var jobs []*forgev1.JobInfo
	req := &forgev1.ListJobsRequest{PageSize: 100}
	for {
		if *limit > 0 {
			req.PageSize = int32(min(*limit-len(jobs), store.MaxPageSize))
		}
		res, err := c.Control().ListJobs(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		jobs = append(jobs, res.Msg.Jobs...)
		if res.Msg.NextPageToken == "" || (*limit > 0 && len(jobs) >= *limit) {
			break
		}
		req.PageToken = res.Msg.NextPageToken
	}
	p := cf.printer()
	if *cf.json {
		out := make([]any, len(jobs))
		for i, j := range jobs {
			out[i] = jsonObject(j)
		}
		return m.writeJSON(p, map[string]any{"jobs": out})
	}
	if len(jobs) == 0 {
		fmt.Fprintln(m.Stdout, noneText("jobs"))
		return nil
	}
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tCREATED\tTYPE\tTARGET\tTASKS\tSTATES")
	for _, j := range jobs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", p.Line(j.Id), timeText(j.CreatedAt), p.Line(j.Type), cut(p.Line(j.Target), 40),
			j.Counts.GetTotal(), countsText(j.Counts))
	}
	return tw.Flush()
}

// noneText is the line a listing prints instead of an empty table: "no
// agents", or "no tasks matching --state failed --agent 'web-*'", naming the
// filters given (pairs of a flag and its value; an empty value was not
// given).
func noneText(what string, filters ...string) string {
	var given []string
	for i := 0; i+1 < len(filters); i += 2 {
		if v := filters[i+1]; v != "" {
			given = append(given, filters[i]+" "+termsafe.Line(shellQuote(v)))
		}
	}
	if len(given) == 0 {
		return "no " + what
	}
	return "no " + what + " matching " + strings.Join(given, " ")
}

// stateCounts are a job's counts by state, in the order the CLI shows them.
func stateCounts(c *forgev1.JobCounts) []struct {
	State forgev1.TaskState
	N     int32
} {
	return []struct {
		State forgev1.TaskState
		N     int32
	}{
		{forgev1.TaskState_TASK_STATE_SUCCEEDED, c.GetSucceeded()},
		{forgev1.TaskState_TASK_STATE_FAILED, c.GetFailed()},
		{forgev1.TaskState_TASK_STATE_TIMED_OUT, c.GetTimedOut()},
		{forgev1.TaskState_TASK_STATE_LOST, c.GetLost()},
		{forgev1.TaskState_TASK_STATE_CANCELED, c.GetCanceled()},
		{forgev1.TaskState_TASK_STATE_EXPIRED, c.GetExpired()},
		{forgev1.TaskState_TASK_STATE_RUNNING, c.GetRunning()},
		{forgev1.TaskState_TASK_STATE_PENDING, c.GetPending()},
	}
}

// countsText names every state a job has tasks in, with how many: "2
// SUCCEEDED, 1 CANCELED". Nothing is lumped together.
func countsText(c *forgev1.JobCounts) string {
	var parts []string
	for _, s := range stateCounts(c) {
		if s.N > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", s.N, stateName(s.State)))
		}
	}
	if len(parts) == 0 {
		return "no tasks"
	}
	return strings.Join(parts, ", ")
}

func (m *Main) runJob(ctx context.Context, args []string) error {
	f := m.newFlags("job", "forge job: show a job, its command and each of its tasks.")
	f.usage = "forge job [flags] JOB_ID"
	f.examples = "forge job j0kq5c3vd7wx4m2a\nforge job j0kq5c3vd7wx4m2a --json | jq '.tasks[] | {agentName, state, exitCode}'"
	cf := f.listClient()
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() != 1 {
		return f.usageError("give one job id")
	}
	c, err := m.newClient("job", cf, nil)
	if err != nil {
		return err
	}
	job, tasks, err := getJob(ctx, c, f.Arg(0))
	if err != nil {
		return err
	}
	ids := make([]string, len(tasks))
	for i, t := range tasks {
		ids[i] = t.AgentId
	}
	names, _ := c.AgentNames(ctx, ids...) // best effort: ids stand in
	name := func(t *forgev1.TaskInfo) string {
		if n := names[t.AgentId]; n != "" {
			return n
		}
		return t.AgentId
	}
	slices.SortStableFunc(tasks, func(a, b *forgev1.TaskInfo) int {
		return strings.Compare(name(a)+"\x00"+a.AgentId, name(b)+"\x00"+b.AgentId)
	})
	p := cf.printer()
	if *cf.json {
		out := make([]any, len(tasks))
		for i, t := range tasks {
			out[i] = jsonTask(t, names[t.AgentId])
		}
		return m.writeJSON(p, map[string]any{"job": jsonObject(job), "tasks": out})
	}
	fmt.Fprintf(m.Stdout, "job       %s\n", p.Line(job.Id))
	if len(tasks) > 0 {
		fmt.Fprintf(m.Stdout, "command   %s\n", commandText(p, tasks[0]))
	} else {
		fmt.Fprintf(m.Stdout, "type      %s\n", p.Line(job.Type))
	}
	fmt.Fprintf(m.Stdout, "target    %s\ncreated   %s\ntasks     %d: %s\n", p.Line(job.Target), timeText(job.CreatedAt), job.Counts.GetTotal(), countsText(job.Counts))
	if job.MaxConcurrency > 0 || job.MaxFailures > 0 {
		fmt.Fprintf(m.Stdout, "limits    max concurrency %d, max failures %d (0: no limit)\n", job.MaxConcurrency, job.MaxFailures)
	}
	if job.Canceled {
		fmt.Fprintln(m.Stdout, "canceled  yes (or stopped by max failures)")
	}
	if len(tasks) == 0 {
		return nil
	}
	fmt.Fprintln(m.Stdout)
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tTASK\tSTATE\tEXIT\tATTEMPT\tUPDATED\tERROR")
	for _, t := range tasks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", p.Line(name(t)), p.Line(t.Id), stateName(t.State), exitText(t), t.Attempt,
			timeText(t.UpdatedAt), cut(p.Line(t.Error), 60))
	}
	return tw.Flush()
}

// getJob reads a job and all of its tasks.
func getJob(ctx context.Context, c *client.Client, id string) (*forgev1.JobInfo, []*forgev1.TaskInfo, error) {
	req := &forgev1.GetJobRequest{JobId: id, PageSize: store.MaxPageSize}
	var tasks []*forgev1.TaskInfo
	for {
		res, err := c.Control().GetJob(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, nil, err
		}
		tasks = append(tasks, res.Msg.Tasks...)
		if res.Msg.NextPageToken == "" {
			return res.Msg.Job, tasks, nil
		}
		req.PageToken = res.Msg.NextPageToken
	}
}

func (m *Main) runTasks(ctx context.Context, args []string) error {
	f := m.newFlags("tasks", "forge tasks: list tasks, newest first (forge task ID shows one).")
	f.usage = "forge tasks [flags]\nforge tasks [flags] TASK_ID...   (as forge task)"
	f.examples = "forge tasks --state failed\nforge tasks --agent 'web-*' --limit 10\nforge tasks --job j0kq5c3vd7wx4m2a --json"
	cf := f.listClient()
	job := f.FlagSet.String("job", "", "only tasks of this job")
	pattern := f.FlagSet.String("agent", "", "only tasks of this agent (an id), or of the agents whose name matches this name or glob (web-*)")
	state := f.FlagSet.String("state", "", "only tasks in this state: "+stateNames)
	limit := f.FlagSet.Int("limit", 50, "most tasks to list (0: no limit)")
	if err := f.parse(args); err != nil {
		return err
	}
	req := &forgev1.ListTasksRequest{JobId: *job}
	if *state != "" {
		s, err := parseState(*state)
		if err != nil {
			return f.usageError("%v", err)
		}
		req.State = s
	}
	c, err := m.newClient("tasks", cf, nil)
	if err != nil {
		return err
	}
	p := cf.printer()
	if f.NArg() > 0 {
		return m.showTasks(ctx, c, cf, f.Args())
	}
	agentIDs := []string{""}
	if *pattern != "" {
		agents, err := findAgents(ctx, c, *pattern)
		if err != nil {
			return err
		}
		agentIDs = agentIDs[:0]
		for _, a := range agents {
			agentIDs = append(agentIDs, a.Id)
		}
	}
	var tasks []*forgev1.TaskInfo
	for _, id := range agentIDs {
		r := &forgev1.ListTasksRequest{JobId: req.JobId, State: req.State, AgentId: id}
		n := 0
		for {
			r.PageSize = 1000
			if *limit > 0 {
				r.PageSize = int32(min(*limit-n, store.MaxPageSize))
			}
			res, err := c.Control().ListTasks(ctx, connect.NewRequest(r))
			if err != nil {
				return err
			}
			tasks = append(tasks, res.Msg.Tasks...)
			n += len(res.Msg.Tasks)
			if res.Msg.NextPageToken == "" || (*limit > 0 && n >= *limit) {
				break
			}
			r.PageToken = res.Msg.NextPageToken
		}
	}
	if len(agentIDs) > 1 { // newest first across agents: ids sort by creation
		slices.SortStableFunc(tasks, func(a, b *forgev1.TaskInfo) int {
			return b.CreatedAt.AsTime().Compare(a.CreatedAt.AsTime())
		})
	}
	if *limit > 0 && len(tasks) > *limit {
		tasks = tasks[:*limit]
	}
	ids := make([]string, len(tasks))
	for i, t := range tasks {
		ids[i] = t.AgentId
	}
	names, _ := c.AgentNames(ctx, ids...)
	if *cf.json {
		out := make([]any, len(tasks))
		for i, t := range tasks {
			out[i] = jsonTask(t, names[t.AgentId])
		}
		return m.writeJSON(p, map[string]any{"tasks": out})
	}
	if len(tasks) == 0 {
		fmt.Fprintln(m.Stdout, noneText("tasks", "--job", *job, "--agent", *pattern, "--state", *state))
		return nil
	}
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tAGENT\tCOMMAND\tSTATE\tEXIT\tATTEMPT\tUPDATED\tERROR")
	for _, t := range tasks {
		name := names[t.AgentId]
		if name == "" {
			name = t.AgentId
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", p.Line(t.Id), p.Line(name), cut(commandText(p, t), 40), stateName(t.State),
			exitText(t), t.Attempt, timeText(t.UpdatedAt), cut(p.Line(t.Error), 60))
	}
	return tw.Flush()
}

func (m *Main) runTask(ctx context.Context, args []string) error {
	f := m.newFlags("task", "forge task: show a task: its command, agent, state, exit code, history and output.\nWith --follow, print its output as it is printed until it ends.")
	f.usage = "forge task [flags] TASK_ID..."
	f.examples = "forge task t0kq5c3vd7wx4m2ab3cd-a1b2c3d4e5f6g7h8\nforge task --follow t0kq5c3vd7wx4m2ab3cd-a1b2c3d4e5f6g7h8\nforge task --json t0kq5c3vd7wx4m2ab3cd-a1b2c3d4e5f6g7h8 | jq -r .stderr"
	cf := f.client()
	follow := f.FlagSet.Bool("follow", false, "print the task's output as the agent sends it (stdout to stdout, stderr to stderr), then how it ended")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() == 0 {
		return f.usageError("give a task id")
	}
	if *follow && f.NArg() != 1 {
		return f.usageError("--follow takes one task id")
	}
	c, err := m.newClient("task", cf, nil)
	if err != nil {
		return err
	}
	if *follow {
		return m.followTask(ctx, c, cf, f.Arg(0))
	}
	return m.showTasks(ctx, c, cf, f.Args())
}

// showTasks prints tasks in full.
func (m *Main) showTasks(ctx context.Context, c *client.Client, cf clientFlags, ids []string) error {
	p := cf.printer()
	var out []any
	for i, id := range ids {
		res, err := c.Control().GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
		if err != nil {
			return aboutID(id, err)
		}
		t := res.Msg.Task
		names, _ := c.AgentNames(ctx, t.AgentId)
		if *cf.json {
			out = append(out, jsonTask(t, names[t.AgentId]))
			continue
		}
		if i > 0 {
			fmt.Fprintln(m.Stdout)
		}
		m.printTask(p, t, names[t.AgentId])
	}
	if *cf.json {
		if len(out) == 1 {
			return m.writeJSON(p, out[0])
		}
		return m.writeJSON(p, map[string]any{"tasks": out})
	}
	return nil
}

// printTask prints a task with its history and output, text from the agent
// escaped by p.
func (m *Main) printTask(p termsafe.Printer, t *forgev1.TaskInfo, agentName string) {
	w := m.Stdout
	m.printTaskHead(p, t, agentName)
	fmt.Fprintf(w, "state     %s\n", stateName(t.State))
	if x := exitText(t); x != "-" {
		fmt.Fprintf(w, "exit      %s\n", x)
	}
	if t.Error != "" {
		fmt.Fprintf(w, "error     %s\n", p.Line(t.Error))
	}
	fmt.Fprintf(w, "attempt   %d of %d\n", t.Attempt, t.MaxAttempts)
	if t.Timeout != nil {
		fmt.Fprintf(w, "timeout   %s\n", t.Timeout.AsDuration())
	}
	fmt.Fprintln(w, "history")
	var prev time.Time
	for _, h := range t.History {
		at := h.At.AsTime()
		step := ""
		if !prev.IsZero() {
			d := at.Sub(prev)
			if d >= time.Millisecond {
				d = d.Round(time.Millisecond)
			}
			step = "+" + d.String()
		}
		prev = at
		fmt.Fprintf(w, "  %s  %-9s  %-10s %s\n", timeText(h.At), stateName(h.State), step, p.Line(h.Reason))
	}
	if len(t.Output) > 0 || len(t.Stderr) > 0 {
		fmt.Fprintf(w, "output    %d bytes", t.OutputSize)
		if t.OutputTruncated {
			fmt.Fprint(w, ", cut to the server's cap (head and tail kept)")
		}
		fmt.Fprintln(w)
	}
	for _, o := range []struct {
		name string
		text []byte
	}{{"stdout", t.Output}, {"stderr", t.Stderr}} {
		if len(o.text) == 0 {
			continue
		}
		fmt.Fprintf(w, "--- %s\n%s", o.name, p.Text(o.text))
		if !strings.HasSuffix(string(o.text), "\n") {
			fmt.Fprintln(w)
		}
	}
}

func (m *Main) printTaskHead(p termsafe.Printer, t *forgev1.TaskInfo, agentName string) {
	agent := p.Line(t.AgentId)
	if agentName != "" {
		agent = p.Line(agentName) + " (" + agent + ")"
	}
	fmt.Fprintf(m.Stdout, "task      %s\njob       %s\nagent     %s\ncommand   %s\ncreated   %s\n",
		p.Line(t.Id), p.Line(t.JobId), agent, commandText(p, t), timeText(t.CreatedAt))
}

// followTask prints a task's output as it comes, then how it ended.
func (m *Main) followTask(ctx context.Context, c *client.Client, cf clientFlags, id string) error {
	p := cf.printer()
	res, err := c.Control().GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
	if err != nil {
		return err
	}
	names, _ := c.AgentNames(ctx, res.Msg.Task.AgentId)
	name := names[res.Msg.Task.AgentId]
	if name == "" {
		name = res.Msg.Task.AgentId
	}
	fmt.Fprintf(m.Stderr, "task %s on %s: %s\n", p.Line(id), p.Line(name), commandText(p, res.Msg.Task))
	out, errw := client.NewLines(escapeWriter{m.Stdout, p}), client.NewLines(escapeWriter{m.Stderr, p})
	_, err = c.Follow(ctx, id, out.Prefix(""), errw.Prefix(""))
	out.Flush()
	errw.Flush()
	if err != nil {
		return err
	}
	g, err := c.Control().GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
	if err != nil {
		return err
	}
	t := g.Msg.Task
	fmt.Fprintf(m.Stderr, "%s\n", endText(p, t))
	return exitCode(runExit([]*forgev1.TaskInfo{t}))
}

// endText says how a task ended: "FAILED exit 3: exit status 3".
func endText(p termsafe.Printer, t *forgev1.TaskInfo) string {
	s := stateName(t.State)
	if x := exitText(t); x != "-" {
		s += " exit " + x
	}
	// "exit status 3" says again what "exit 3" said.
	if t.Error != "" && t.State != forgev1.TaskState_TASK_STATE_SUCCEEDED && t.Error != fmt.Sprintf("exit status %d", t.ExitCode) {
		s += ": " + p.Line(t.Error)
	}
	return s
}

// escapeWriter escapes what it writes for a terminal (unless raw). Lines
// writes each line in one Write, so no character is cut in two.
type escapeWriter struct {
	w io.Writer
	p termsafe.Printer
}

func (e escapeWriter) Write(b []byte) (int, error) {
	if _, err := e.w.Write(e.p.Text(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}
