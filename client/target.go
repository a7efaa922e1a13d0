package client

import (
	"encoding/json"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/store"
)

// A Target names the agents a job goes to: Agent, Selector or All. Its zero
// value names none, which Dispatch refuses (invalid_argument).
type Target struct {
	set  func(*forgev1.DispatchRequest)
	text string
}

// Agent targets agents by id or by name, as a person types them: a string
// shaped like an agent id (as `forge agents` lists it: "a" and 15 characters
// of the id alphabet) is AgentID, anything else AgentName.
func Agent(idOrName string) Target {
	if len(idOrName) == store.AgentIDLen && store.ValidID(idOrName, 'a') {
		return AgentID(idOrName)
	}
	return AgentName(idOrName)
}

// AgentID targets one agent by its id. It gets the task even while it is
// offline (it runs when the agent is back, within the delivery TTL); an
// unknown id is refused with connect.CodeNotFound, a revoked agent with
// connect.CodeFailedPrecondition.
func AgentID(id string) Target {
	return Target{text: "agent " + id, set: func(r *forgev1.DispatchRequest) {
		r.Target = &forgev1.DispatchRequest_AgentId{AgentId: id}
	}}
}

// AgentName targets agents by name: a name, or a glob over names matched by
// the server — web-1, web-*, web-?, web-[1-3] (`*` any run of characters, `?`
// one, `[...]` one of a set, `[!...]` one not in it, `\` escapes). Like a
// selector, it reaches every online agent whose name matches (names need not
// be unique: two machines may share a hostname), or every one that is not
// revoked with the request's IncludeOffline. Matching none makes an empty job.
func AgentName(pattern string) Target {
	return Target{text: "agents named " + pattern, set: func(r *forgev1.DispatchRequest) {
		r.Target = &forgev1.DispatchRequest_AgentName{AgentName: pattern}
	}}
}

// Selector targets the online agents whose labels match a selector, such as
// `env=prod,role in (web,api)`: a comma-separated list of requirements, all of
// which must hold — k=v, k!=v, k in (a,b), k notin (a,b), k (the label
// exists), !k (it does not). With the request's IncludeOffline, offline agents
// too.
func Selector(selector string) Target {
	return Target{text: selector, set: func(r *forgev1.DispatchRequest) {
		r.Target = &forgev1.DispatchRequest_Selector{Selector: selector}
	}}
}

// All targets every online agent (every agent but revoked ones, with the
// request's IncludeOffline).
func All() Target {
	return Target{text: "all", set: func(r *forgev1.DispatchRequest) {
		r.Target = &forgev1.DispatchRequest_All{All: true}
	}}
}

// String describes the target as the server's JobInfo.target does.
func (t Target) String() string { return t.text }

// Command is the payload of the agents' built-in exec task type.
type Command struct {
	// Argv is the command and its arguments; argv[0] must be allowed on the
	// agent (forge agent --allow-exec), exactly as written here.
	Argv []string `json:"argv"`
	// Dir is the working directory on the agent; empty means the agent's.
	Dir string `json:"dir,omitempty"`
	// Env is added to the command's environment (only the names the agent
	// allows with --allow-env).
	Env map[string]string `json:"env,omitempty"`
}

// Exec returns a job that runs argv on the target's agents with the built-in
// exec task type; see Command for a working directory or environment. Set any
// other field of the request (Timeout, MaxConcurrency …) before sending it.
func Exec(target Target, argv ...string) *forgev1.DispatchRequest {
	return Command{Argv: argv}.On(target)
}

// On returns a job that runs the command on the target's agents.
func (c Command) On(target Target) *forgev1.DispatchRequest {
	payload, _ := json.Marshal(c) // strings and a map of strings: cannot fail
	return NewDispatch("exec", payload, target)
}

// NewDispatch returns a job of any task type: the agents that handle it (a Go
// agent's Handle) get the payload as it is.
func NewDispatch(taskType string, payload []byte, target Target) *forgev1.DispatchRequest {
	r := &forgev1.DispatchRequest{Type: taskType, Payload: payload}
	if target.set != nil {
		target.set(r)
	}
	return r
}
