// forge's fleet page: plain JavaScript, no build step, no dependencies.
//
// It reads everything through the ControlService's Connect JSON API with the
// operator token the person typed in, kept in this tab's sessionStorage and sent
// only as an Authorization header (never in a URL, never in a cookie, so no
// other site can make the browser call forge on the operator's behalf).
//
// Everything that came from agents or callers (names, labels, versions,
// targets, errors, output) goes into the page as text (textContent, text
// nodes), never as HTML, and with control, bidi and zero-width characters
// shown as visible escapes (\x1b, \u202e), as the CLI shows them.
'use strict';

(() => {
  const TOKEN_KEY = 'forge.operatorToken';
  const REFRESH_MS = 2000;
  const JOBS_SHOWN = 15;
  const MAX_OUTPUT_CHARS = 4 << 20;

  const STATES = ['PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELED', 'TIMED_OUT', 'EXPIRED', 'LOST'];
  const TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELED', 'TIMED_OUT', 'EXPIRED', 'LOST']);

  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let timer = 0;
  let generation = 0; // bumped at sign-out: answers of an older session are dropped
  const view = {
    agents: [],
    agentsById: new Map(),
    moreAgents: false,
    agentsAt: 0, // when the agents were read
    jobs: [],
    job: null, // the selected job's id
    task: null, // the task whose output is shown
    commands: new Map(), // job id -> command text, read once per job
  };
  let follow = null; // the output being followed: {taskId, ctrl, offset, decoders}

  // ---- text that came from elsewhere --------------------------------------

  // Characters that must not reach the page raw (internal/termsafe's Unsafe):
  // C0 and C1 controls, DEL, format characters (bidi controls, zero-width),
  // line and paragraph separators, and the letters that render as nothing.
  const UNSAFE_LINE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u115f\u1160\u3164\uffa0\p{Cf}]/gu;
  const UNSAFE_TEXT = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u115f\u1160\u3164\uffa0\p{Cf}]/gu;
  // Colour and style sequences (SGR) are common in command output and mean
  // nothing here: they are dropped. Every other escape is shown.
  const SGR = /\u001b\[[0-9;:]*m/g;

  function escapeChar(c) {
    const n = c.codePointAt(0);
    return n < 0x100 ? '\\x' + n.toString(16).padStart(2, '0') : '\\u' + n.toString(16).padStart(4, '0');
  }

  // line is one line of text: a name, a label, an error.
  function line(s) {
    return String(s ?? '').replace(UNSAFE_LINE, escapeChar);
  }

  // outputText is command output: newlines and tabs kept.
  function outputText(s) {
    return s.replace(SGR, '').replace(/\r\n/g, '\n').replace(/\r/g, '\n').replace(UNSAFE_TEXT, escapeChar);
  }

  // el builds an element; children are elements or strings, and strings become
  // text nodes (never HTML).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'onclick') e.addEventListener('click', v);
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c != null && c !== false) e.append(c);
    }
    return e;
  }

  function bytes(b64) {
    if (!b64) return new Uint8Array();
    return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  }

  // ---- the API ------------------------------------------------------------

  class APIError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  const signedOutCodes = new Set(['unauthenticated', 'permission_denied']);

  async function call(method, body, signal) {
    let res;
    try {
      res = await fetch('forge.v1.ControlService/' + method, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + token },
        body: JSON.stringify(body || {}),
        cache: 'no-store',
        credentials: 'omit',
        signal,
      });
    } catch (e) {
      if (signal && signal.aborted) throw e;
      throw new APIError('unreachable', 'the server cannot be reached');
    }
    if (!res.ok) {
      let e = {};
      try {
        e = await res.json();
      } catch (_) {
        // not a Connect error: a proxy's page, say
      }
      throw new APIError(e.code || 'http_' + res.status, e.message || res.status + ' ' + res.statusText);
    }
    return res.json();
  }

  // ---- formatting ---------------------------------------------------------

  function stateName(s) {
    return String(s || '').replace(/^TASK_STATE_/, '') || 'PENDING';
  }

  function statusName(s) {
    return String(s || '').replace(/^AGENT_STATUS_/, '').toLowerCase() || 'unknown';
  }

  function ago(ts) {
    if (!ts) return '—';
    const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
    if (s < 5) return 'just now';
    if (s < 60) return Math.floor(s) + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function timeOfDay(d) {
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  // shortID shows the end of an id: job and task ids start with their time, so
  // ids made together share their first characters, not their last.
  function shortID(id) {
    const base = id.split('-')[0];
    return base.length > 9 ? '…' + base.slice(-8) : base;
  }

  function clip(s, n) {
    return s.length > n ? s.slice(0, n - 1) + '…' : s;
  }

  function agentName(id) {
    const a = view.agentsById.get(id);
    return a ? line(a.name || a.hostname || a.id) : id;
  }

  function stateBadge(st) {
    return el('span', { class: 'state s-' + st.toLowerCase(), 'data-state': st }, st.replace('_', ' ').toLowerCase());
  }

  // commandOf makes a job's command from one of its tasks' payload: an exec
  // task's argv, an echo task's text, or nothing for other types.
  function commandOf(type, payload) {
    const raw = new TextDecoder().decode(bytes(payload));
    if (type === 'exec') {
      try {
        const p = JSON.parse(raw);
        if (Array.isArray(p.argv)) return p.argv.map((a) => shellQuote(String(a))).join(' ');
      } catch (_) {
        // not JSON: shown as the type alone
      }
      return '';
    }
    if (type === 'echo') return raw;
    return '';
  }

  // shellQuote writes an argument as a shell would need it, so a command's
  // arguments stay apart when shown: sh -c 'echo a; echo b'.
  function shellQuote(a) {
    if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(a)) return a;
    return "'" + a.replace(/'/g, "'\\''") + "'";
  }

  // ---- sign in and out ----------------------------------------------------

  function showLogin(message) {
    $('app').hidden = true;
    $('signout').hidden = true;
    $('summary').replaceChildren();
    $('updated').textContent = '';
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('token').focus();
  }

  function showApp() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('signout').hidden = false;
    refresh();
  }

  function signOut(message) {
    generation++;
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(timer);
    stopFollowing();
    view.job = null;
    view.task = null;
    view.commands.clear();
    view.agentsAt = 0;
    $('detail').hidden = true;
    showLogin(message);
  }

  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = $('token');
    token = input.value.trim();
    $('login-error').textContent = '';
    try {
      await call('ListAgents', { pageSize: 1 });
    } catch (e) {
      token = '';
      $('login-error').textContent =
        e.code === 'unauthenticated' ? 'The server refused this token: ' + line(e.message)
        : e.code === 'permission_denied' ? 'This is not an operator token: ' + line(e.message)
        : 'Cannot sign in: ' + line(e.message);
      input.select();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    input.value = '';
    showApp();
  });

  $('signout').addEventListener('click', () => signOut('Signed out.'));
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && token && !$('app').hidden) refresh();
  });
  $('filter').addEventListener('input', renderAgents);

  // ---- refreshing ---------------------------------------------------------

  // agentsEvery is how often the agents are read again: every refresh for a
  // small fleet, less often for a big one (each agent is a store read), at
  // least every 30 s.
  function agentsEvery() {
    return Math.min(30000, Math.max(REFRESH_MS, view.agents.length * 10));
  }

  async function refresh() {
    clearTimeout(timer);
    const gen = generation;
    if (document.hidden) {
      // Nobody looks: read nothing until the tab is shown again.
      return;
    }
    try {
      const readAgents = Date.now() - view.agentsAt >= agentsEvery();
      const [agents, jobs] = await Promise.all([
        readAgents ? call('ListAgents', { pageSize: 1000 }) : null,
        call('ListJobs', { pageSize: JOBS_SHOWN }),
      ]);
      if (gen !== generation) return;
      if (agents) {
        view.agents = agents.agents || [];
        view.moreAgents = !!agents.nextPageToken;
        view.agentsById = new Map(view.agents.map((a) => [a.id, a]));
        view.agentsAt = Date.now();
      }
      view.jobs = jobs.jobs || [];
      await readCommands(gen);
      if (view.job) await refreshJob(gen);
      if (gen !== generation) return;
      renderSummary();
      renderAgents();
      renderJobs();
      $('banner').hidden = true;
      $('updated').textContent = 'updated ' + timeOfDay(new Date());
      $('updated').classList.remove('stale');
    } catch (e) {
      if (gen !== generation) return;
      if (signedOutCodes.has(e.code)) {
        signOut('The server no longer accepts this token: ' + line(e.message));
        return;
      }
      $('banner').hidden = false;
      $('banner').textContent = 'Cannot refresh (' + line(e.message) + '); trying again.';
      $('updated').classList.add('stale');
    }
    if (gen === generation) timer = setTimeout(refresh, REFRESH_MS);
  }

  // readCommands learns the command of each listed job not seen before (one
  // task of the job tells it; a job's command never changes).
  async function readCommands(gen) {
    const need = view.jobs.filter((j) => !view.commands.has(j.id) && (j.counts?.total || 0) > 0);
    await Promise.all(need.map(async (j) => {
      try {
        const r = await call('ListTasks', { jobId: j.id, pageSize: 1 });
        const t = (r.tasks || [])[0];
        if (gen === generation && t) view.commands.set(j.id, commandOf(j.type, t.payload));
      } catch (_) {
        // shown without its command; tried again on the next refresh
      }
    }));
  }

  async function refreshJob(gen) {
    const id = view.job;
    let r;
    try {
      r = await call('GetJob', { jobId: id, pageSize: 200 });
    } catch (e) {
      if (e.code === 'not_found') {
        view.job = null;
        $('detail').hidden = true;
        return;
      }
      throw e;
    }
    if (gen !== generation || view.job !== id) return;
    renderJob(r.job, r.tasks || []);
  }

  // ---- rendering ----------------------------------------------------------

  function renderSummary() {
    const n = { online: 0, offline: 0, revoked: 0 };
    let running = 0;
    for (const a of view.agents) {
      const s = statusName(a.status);
      n[s] = (n[s] || 0) + 1;
      running += (a.running || []).length;
    }
    const item = (cls, count, label) =>
      el('span', { class: 'sum ' + cls, 'data-summary': cls }, el('b', null, String(count)), ' ' + label);
    $('summary').replaceChildren(
      item('online', n.online, 'online'),
      item('offline', n.offline, 'offline'),
      item('revoked', n.revoked, 'revoked'),
      item('running', running, running === 1 ? 'task running' : 'tasks running'),
    );
  }

  function agentMatches(a, q) {
    if (!q) return true;
    const labels = Object.entries(a.labels || {}).map(([k, v]) => k + '=' + v);
    const hay = [a.name, a.id, a.hostname, a.version, statusName(a.status), ...labels].join(' ').toLowerCase();
    return q.toLowerCase().split(/\s+/).every((w) => hay.includes(w));
  }

  function renderAgents() {
    const q = $('filter').value.trim();
    const order = { online: 0, offline: 1, revoked: 2 };
    const names = new Map();
    for (const a of view.agents) names.set(a.name, (names.get(a.name) || 0) + 1);
    const shown = view.agents
      .filter((a) => agentMatches(a, q))
      .sort((x, y) => (order[statusName(x.status)] ?? 3) - (order[statusName(y.status)] ?? 3)
        || String(x.name).localeCompare(String(y.name)) || x.id.localeCompare(y.id));
    const rows = shown.map((a) => {
      const status = statusName(a.status);
      const dup = names.get(a.name) > 1;
      const labels = Object.entries(a.labels || {}).sort(([x], [y]) => x.localeCompare(y))
        .map(([k, v]) => el('span', { class: 'chip' }, line(k) + '=' + line(v)));
      const running = (a.running || []).map((r) =>
        el('button', {
          type: 'button', class: 'chip task' + (view.task === r.taskId ? ' selected' : ''),
          title: 'show the output of ' + r.taskId, 'data-task-id': r.taskId,
          onclick: () => openTask(r.taskId),
        }, shortID(r.taskId)));
      if (a.pending) running.push(el('span', { class: 'dim' }, '+' + a.pending + ' queued'));
      return el('tr', { 'data-agent-id': a.id, class: 'agent ' + status },
        el('td', null,
          el('div', { class: 'name' }, line(a.name || '(no name)'), dup ? el('span', { class: 'dup', title: 'several agents have this name' }, 'same name') : null),
          el('div', { class: 'mono dim small' }, a.id, a.hostname && a.hostname !== a.name ? ' · ' + line(a.hostname) : '')),
        el('td', null, el('span', { class: 'status ' + status }, status)),
        el('td', { class: 'labels' }, ...labels),
        el('td', { class: 'mono' }, line(a.version || '—')),
        el('td', { class: 'running' }, ...(running.length ? running : [el('span', { class: 'dim' }, 'idle')])),
        el('td', { title: a.lastSeenAt || '' }, ago(a.lastSeenAt)));
    });
    $('agents').tBodies[0].replaceChildren(...rows);
    const total = view.agents.length + (view.moreAgents ? '+' : '');
    $('agents-count').textContent = q ? shown.length + ' of ' + total : String(total);
    $('agents-empty').hidden = rows.length > 0;
    $('agents-empty').textContent = view.agents.length ? 'No agents match the filter.'
      : 'No agents yet. Start one: forge agent --server URL --enroll-token TOKEN';
  }

  // countsBar draws a job's tasks by state as one bar and a line of counts.
  function countsBar(counts) {
    const total = counts?.total || 0;
    const bar = el('div', { class: 'bar', title: total + ' tasks' });
    const parts = [];
    for (const st of STATES) {
      const n = counts?.[camel(st)] || 0;
      if (!n) continue;
      const seg = el('span', { class: 'seg s-' + st.toLowerCase() });
      seg.style.width = (100 * n / total) + '%';
      bar.append(seg);
      parts.push(el('span', { class: 'n s-' + st.toLowerCase(), 'data-state': st }, n + ' ' + st.replace('_', ' ').toLowerCase()));
    }
    if (!total) parts.push(el('span', { class: 'dim' }, 'no tasks'));
    return el('div', { class: 'progress' }, bar, el('div', { class: 'nums' }, ...parts));
  }

  function camel(st) {
    return st.toLowerCase().replace(/_([a-z])/g, (_, c) => c.toUpperCase());
  }

  function renderJobs() {
    const rows = view.jobs.map((j) => {
      const cmd = view.commands.get(j.id);
      return el('tr', {
        'data-job-id': j.id, class: 'job' + (view.job === j.id ? ' selected' : '') + (j.done ? ' done' : ''),
        onclick: () => openJob(j.id), tabindex: '0',
      },
      el('td', { class: 'mono nowrap', title: j.id }, shortID(j.id)),
      el('td', { class: 'command mono', title: line(cmd || j.type) },
        el('div', { class: 'cmd' }, el('span', { class: 'type' }, line(j.type)), cmd ? ' ' + clip(line(cmd), 120) : ''),
        el('div', { class: 'target' }, '→ ' + clip(line(j.target || ''), 60))),
      el('td', null, countsBar(j.counts)),
      el('td', { class: 'nowrap', title: j.createdAt || '' }, ago(j.createdAt)));
    });
    $('jobs').tBodies[0].replaceChildren(...rows);
    $('jobs-empty').hidden = rows.length > 0;
  }

  function renderJob(job, tasks) {
    $('detail').hidden = false;
    $('job-id').textContent = job.id;
    const cmd = view.commands.get(job.id);
    $('job-command').textContent = line(job.type) + (cmd ? ' · ' + line(cmd) : '') + ' → ' + line(job.target || '');
    const done = $('job-done');
    done.textContent = job.canceled ? 'canceled' : job.done ? 'done' : 'running';
    done.className = 'pill ' + (job.canceled ? 'canceled' : job.done ? 'done' : 'active');
    $('job-counts').replaceChildren(countsBar(job.counts));
    const rows = tasks.map((t) => {
      const st = stateName(t.state);
      // An exit code only where there is one: a success's 0, or what a command exited with.
      const reported = st === 'SUCCEEDED' || (TERMINAL.has(st) && t.exitCode);
      return el('tr', {
        'data-task-id': t.id, class: 'task' + (view.task === t.id ? ' selected' : ''),
        onclick: () => openTask(t.id), tabindex: '0',
      },
      el('td', null, agentName(t.agentId)),
      el('td', null, stateBadge(st)),
      el('td', null, String(t.attempt || 0)),
      el('td', { class: 'mono' }, reported ? String(t.exitCode || 0) : '—'),
      el('td', { class: 'error-cell', title: line(t.error || '') }, clip(line(t.error || ''), 120)));
    });
    $('tasks').tBodies[0].replaceChildren(...rows);
    if (!view.task || !tasks.some((t) => t.id === view.task)) {
      const pick = tasks.find((t) => stateName(t.state) === 'RUNNING') || tasks[0];
      if (pick) openTask(pick.id, true);
    }
  }

  function openJob(id) {
    if (view.job === id) return;
    view.job = id;
    view.task = null;
    stopFollowing();
    $('output-box').hidden = true;
    renderJobs();
    const gen = generation;
    refreshJob(gen).catch(() => {});
  }

  function openTask(id, fromJob) {
    view.task = id;
    if (!fromJob) {
      // From the agents table: show the task's job too.
      call('GetTask', { taskId: id }).then((r) => {
        if (view.task !== id) return;
        if (r.task && r.task.jobId !== view.job) {
          view.job = r.task.jobId;
          renderJobs();
          refreshJob(generation).catch(() => {});
        }
      }).catch(() => {});
    }
    for (const e of document.querySelectorAll('[data-task-id]')) {
      e.classList.toggle('selected', e.getAttribute('data-task-id') === id);
    }
    followOutput(id);
  }

  // ---- live output --------------------------------------------------------

  function stopFollowing() {
    if (follow) follow.ctrl.abort();
    follow = null;
  }

  function followOutput(taskId) {
    if (follow && follow.taskId === taskId) return;
    stopFollowing();
    const f = {
      taskId,
      ctrl: new AbortController(),
      offset: '0',
      decoders: { STREAM_STDOUT: new TextDecoder(), STREAM_STDERR: new TextDecoder() },
    };
    follow = f;
    const a = view.agentsById.get(taskId.slice(taskId.indexOf('-') + 1));
    $('out-agent').textContent = a ? line(a.name || a.id) : 'agent';
    $('out-task').textContent = taskId;
    $('output').replaceChildren();
    $('output').dataset.finished = 'false';
    $('output-box').hidden = false;
    setOutputState('', true);
    readLoop(f);
  }

  async function readLoop(f) {
    let backoff = 500;
    while (follow === f) {
      try {
        const r = await call('ReadOutput', { taskId: f.taskId, offset: f.offset, wait: '20s' }, f.ctrl.signal);
        if (follow !== f) return;
        for (const c of r.chunks || []) appendChunk(f, c);
        if (r.nextOffset) f.offset = r.nextOffset;
        setOutputState(stateName(r.state), !r.finished);
        if (r.finished) {
          for (const [stream, d] of Object.entries(f.decoders)) appendText(stream, d.decode());
          $('output').dataset.finished = 'true';
          if (!$('output').textContent) appendText('', '(no output)');
          return;
        }
        backoff = 500;
      } catch (e) {
        if (follow !== f || f.ctrl.signal.aborted) return;
        if (signedOutCodes.has(e.code)) {
          signOut('The server no longer accepts this token: ' + line(e.message));
          return;
        }
        if (e.code === 'not_found') {
          setOutputState('gone', false);
          appendText('', 'This task is gone (past its retention).');
          return;
        }
        $('out-live').textContent = 'reconnecting';
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  }

  function setOutputState(st, live) {
    const s = $('out-state');
    s.replaceChildren();
    if (st) s.append(stateBadge(st));
    $('out-live').hidden = !live;
    $('out-live').textContent = 'live';
  }

  function appendChunk(f, c) {
    const stream = c.stream || '';
    const data = bytes(c.data);
    if (stream === 'STREAM_STDOUT' || stream === 'STREAM_STDERR') {
      appendText(stream, f.decoders[stream].decode(data, { stream: true }));
    } else {
      appendText('', new TextDecoder().decode(data));
    }
  }

  function appendText(stream, s) {
    if (!s) return;
    const pre = $('output');
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    const cls = stream === 'STREAM_STDERR' ? 'err' : stream === 'STREAM_STDOUT' ? 'out' : 'note';
    const text = cls === 'note' ? '\n' + line(s.trim()) + '\n' : outputText(s);
    const last = pre.lastElementChild;
    if (last && last.className === cls) last.append(text);
    else pre.append(el('span', { class: cls }, text));
    follow.chars = (follow.chars || 0) + text.length;
    while (follow.chars > MAX_OUTPUT_CHARS && pre.childElementCount > 1) {
      follow.chars -= pre.firstElementChild.textContent.length;
      pre.firstElementChild.remove();
    }
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  // ---- start --------------------------------------------------------------

  if (token) showApp();
  else showLogin('');
})();
