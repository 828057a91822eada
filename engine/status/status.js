// status.js -- the live status page of nerve (GET /status).
//
// Polls /status.json and /decisions once a second and writes every value
// with textContent: nothing from the server ever becomes markup, so a kill
// reason or a rule's text holding <script> shows as text. The admin token
// is asked for only to reset a kill switch; it stays in this tab
// (sessionStorage) and is sent as a bearer header, never in a URL.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'nerve.adminToken';
  const POLL_MS = 1000;
  const DECISIONS = 20; // rows of the decision log shown
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let decisionsKey = null; // ids of the rows shown: redrawn only when they change
  let timer = null;
  let busy = false; // a poll is running
  let again = false; // ... and another was asked for meanwhile

  function show(el, v) {
    el.textContent = v === null || v === undefined || v === '' ? '–' : String(v);
  }

  function td(tr, v, cls) {
    const c = document.createElement('td');
    show(c, v);
    if (cls) c.className = cls;
    tr.appendChild(c);
    return c;
  }

  function fill(table, rows, build, empty) {
    const frag = document.createDocumentFragment();
    for (const r of rows) {
      const tr = document.createElement('tr');
      build(tr, r);
      frag.appendChild(tr);
    }
    if (!rows.length && empty) {
      const tr = document.createElement('tr');
      const c = td(tr, empty, 'empty');
      c.colSpan = table.tHead.rows[0].cells.length;
      frag.appendChild(tr);
    }
    table.tBodies[0].replaceChildren(frag);
  }

  function age(s) {
    if (typeof s !== 'number' || !isFinite(s)) return '–';
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }

  function num(v) {
    return typeof v === 'number' && isFinite(v) ? v.toLocaleString('en') : '–';
  }

  // ---- sales ----------------------------------------------------------------------
  function renderSales(sales) {
    const ps = Array.isArray(sales.per_second) ? sales.per_second : [];
    const n = ps.length;
    let peak = 0;
    for (const v of ps) if (v > peak) peak = v;
    // The last slot is the second still running: "now" is the one before.
    show($('rate-now'), n > 1 ? ps[n - 2] : 0);
    show($('rate-minute'), num(sales.last_minute));
    show($('rate-peak'), peak);
    const max = Math.max(1, peak);
    const pts = ps.map((v, i) =>
      ((i * 600) / Math.max(1, n - 1)).toFixed(1) + ',' + (118 - (v / max) * 110).toFixed(1));
    $('chart-line').setAttribute('points', pts.join(' '));
    show($('chart-max'), 'max ' + peak + '/s');
    // One short item per result, wrapping: the sales card stays short
    // enough at 1280x800 for the kill switches and decisions to show.
    const answers = sales.answers || {};
    const frag = document.createDocumentFragment();
    for (const k of Object.keys(answers)) {
      const li = document.createElement('li');
      const name = document.createElement('span');
      name.textContent = k;
      const n = document.createElement('strong');
      n.textContent = num(answers[k]);
      li.dataset.result = k;
      li.append(name, ' ', n);
      frag.appendChild(li);
    }
    $('answers').replaceChildren(frag);
    fill($('skus'), sales.top_skus || [], (tr, s) => {
      td(tr, s.sku);
      td(tr, num(s.units), 'num');
      td(tr, num(s.sales), 'num');
      td(tr, s.stock === null ? 'unknown' : num(s.stock), 'num');
    }, 'no sales in the last 5 minutes');
  }

  // ---- kill switches --------------------------------------------------------------
  // Rows are kept by scope and updated in place, so a reset button that has
  // the keyboard focus keeps it across polls.
  const killRows = new Map();

  function killRow(scope) {
    let row = killRows.get(scope);
    if (row) return row;
    const tr = document.createElement('tr');
    const cells = [];
    for (let i = 0; i < 6; i++) cells.push(td(tr, ''));
    cells[0].className = 'any';
    cells[2].className = 'any reason';
    cells[3].className = 'num';
    const act = document.createElement('td');
    const btn = document.createElement('button');
    btn.type = 'button';
    btn.className = 'reset';
    btn.textContent = 'Reset';
    btn.setAttribute('aria-label', 'Reset kill switch ' + scope);
    btn.dataset.scope = scope;
    btn.addEventListener('click', () => reset(scope, btn));
    act.appendChild(btn);
    tr.appendChild(act);
    tr.dataset.scope = scope;
    row = { tr, cells };
    killRows.set(scope, row);
    return row;
  }

  function renderKills(ks) {
    const body = $('kill-table').tBodies[0];
    const msgRow = body.querySelector('tr.none');
    if (ks === null) {
      setKillEmpty(body, 'Redis did not answer: kill switches unknown');
      return;
    }
    const seen = new Set();
    const list = Array.isArray(ks.engaged) ? ks.engaged : [];
    for (const k of list) {
      if (typeof k.scope !== 'string') continue;
      seen.add(k.scope);
      const row = killRow(k.scope);
      const c = row.cells;
      show(c[0], k.scope);
      show(c[1], k.rule);
      show(c[2], k.reason);
      show(c[3], age(k.age_seconds));
      show(c[4], k.state + (k.attempts ? ' (' + k.attempts + ' attempts)' : ''));
      show(c[5], k.halt_sales ? 'yes' : 'no');
      if (row.tr.parentNode !== body) body.appendChild(row.tr);
    }
    for (const [scope, row] of killRows) {
      if (!seen.has(scope)) {
        row.tr.remove();
        killRows.delete(scope);
      }
    }
    if (msgRow) msgRow.remove();
    if (!killRows.size) setKillEmpty(body, 'none engaged');
  }

  function setKillEmpty(body, text) {
    let tr = body.querySelector('tr.none');
    if (!tr) {
      tr = document.createElement('tr');
      tr.className = 'none';
      const c = td(tr, '', 'empty');
      c.colSpan = 7;
      body.appendChild(tr);
    }
    show(tr.cells[0], text);
  }

  function killMsg(text, bad) {
    const m = $('kill-msg');
    m.textContent = text;
    m.className = bad ? 'msg error' : 'msg ok';
  }

  async function reset(scope, btn) {
    // A token typed and left in the field (Tab to Reset, no "Use token")
    // is the one meant: use it rather than ask again.
    if ($('token').value.trim()) useToken();
    if (!token) {
      killMsg('Enter the admin token, then press Reset again.', true);
      $('token').focus();
      return;
    }
    btn.disabled = true;
    try {
      const r = await fetch('/admin/killswitch/' + encodeURIComponent(scope), {
        method: 'DELETE',
        headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
        body: JSON.stringify({ reason: 'reset from the status page', actor: 'status page' }),
        cache: 'no-store',
        credentials: 'omit',
      });
      let body = {};
      try {
        body = await r.json();
      } catch (e) {
        body = {};
      }
      const why = typeof body.message === 'string' ? body.message : '';
      if (r.ok) killMsg('Reset ' + scope + '.', false);
      else if (r.status === 401)
        killMsg('Wrong admin token (401): nothing was reset; ' + scope + ' is still engaged.', true);
      else if (r.status === 403)
        killMsg('Refused (403): ' + why + '. ' + scope + ' is still engaged.', true);
      else if (r.status === 404) killMsg(scope + ' was no longer engaged.', true);
      else killMsg('Reset of ' + scope + ' failed (' + r.status + '): ' + why, true);
    } catch (e) {
      killMsg('Reset of ' + scope + ' failed: ' + e.message, true);
    } finally {
      btn.disabled = false;
      poll();
    }
  }

  function tokenState() {
    show($('token-state'), token ? 'token set for this tab' : 'no token: read-only');
    $('token-forget').disabled = !token;
  }

  function useToken() {
    token = $('token').value.trim();
    $('token').value = '';
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    tokenState();
  }

  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    useToken();
  });
  $('token-forget').addEventListener('click', () => {
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    tokenState();
  });

  // ---- rules, health ----------------------------------------------------------------
  function renderRules(rules) {
    if (rules === null) {
      show($('rules-gen'), 'rules not enabled');
      fill($('rules'), [], () => {}, 'rules are not enabled');
      return;
    }
    show($('rules-gen'), rules.generation);
    const sha = $('rules-sha');
    show(sha, typeof rules.sha256 === 'string' ? rules.sha256.slice(0, 16) : null);
    sha.title = rules.sha256 || '';
    // The last reload (SIGHUP, POST /admin/reload, nerve reload): when it
    // failed, the rules below are the previous ones, still in force.
    const last = rules.last_reload || {};
    const res = $('reload-result');
    show(res, last.result === undefined ? null : last.result +
      (last.at ? ' at ' + new Date(last.at * 1000).toLocaleTimeString() : '') +
      (last.result === 'failed' ? ': the previous rules are kept' : ''));
    res.className = last.result === 'failed' ? 'error' : '';
    const errs = $('reload-errors');
    const frag = document.createDocumentFragment();
    for (const e of last.errors || []) {
      const li = document.createElement('li');
      li.textContent = e;
      frag.appendChild(li);
    }
    errs.replaceChildren(frag);
    fill($('rules'), rules.rules || [], (tr, r) => {
      td(tr, r.name);
      td(tr, (r.channels || []).join(', '));
      td(tr, num(r.evaluations), 'num');
      td(tr, num(r.errors), 'num');
      td(tr, r.evaluations ? ((r.duration_seconds / r.evaluations) * 1000).toFixed(3) + ' ms' : '–',
        'num');
    }, 'no rules loaded');
  }

  function renderHealth(st) {
    const rd = st.ready || {};
    const items = [];
    items.push(['Redis', rd.redis ? 'up' : 'down']);
    if ('bus_connected' in rd) items.push(['Bus', rd.bus_connected ? 'connected' : 'disconnected']);
    if (st.bus && st.bus.streams)
      items.push(['Stream entries pending', num(st.bus.pending)]);
    const q = rd.event_queue;
    if (q)
      items.push(['Event queue', num(q.depth) + ' / ' + num(q.capacity) +
        (q.dropped ? ' (' + num(q.dropped) + ' dropped)' : '')]);
    if (rd.evaluator) items.push(['Evaluator', rd.evaluator.stalled ? 'stalled' : 'ok']);
    if (rd.ledger)
      items.push(['Ledger lag', rd.ledger.lag_seconds + ' s' + (rd.ledger.up ? '' : ' (database down)')]);
    items.push(['Readiness', rd.status]);
    const frag = document.createDocumentFragment();
    for (const [k, v] of items) {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      show(dd, v);
      frag.append(dt, dd);
    }
    $('health').replaceChildren(frag);
    const reasons = document.createDocumentFragment();
    for (const r of (rd.reasons || []).concat(rd.warnings || [])) {
      const li = document.createElement('li');
      li.textContent = r;
      reasons.appendChild(li);
    }
    $('reasons').replaceChildren(reasons);
    const badge = $('ready');
    badge.textContent = rd.status === 'ready' ? 'ready' : 'not ready';
    badge.className = 'badge ' + (rd.status === 'ready' ? 'good' : 'bad');
  }

  // ---- decisions (GET /decisions, newest first) -------------------------------------
  function decisionRow(tr, x) {
    const err = x.kind === 'rule_error';
    tr.dataset.id = typeof x.id === 'string' ? x.id : '';
    tr.dataset.kind = typeof x.kind === 'string' ? x.kind : '';
    const ts = typeof x.ts === 'number' ? new Date(x.ts * 1000).toLocaleTimeString() : null;
    td(tr, ts, 'time');
    td(tr, x.rule);
    let act = err ? 'rule error' : typeof x.action === 'string' ? x.action : '';
    if (act && !err && typeof x.level === 'string') act += ' (' + x.level + ')';
    if (act && !err && x.halt_sales === true) act += ', halts sales';
    td(tr, act, err ? 'error' : '');
    td(tr, x.scope, 'any');
    // A rule error's text reads FILE:LINE: message.
    td(tr, err ? x.error : x.reason, err ? 'any reason error code' : 'any reason');
  }

  async function pollDecisions() {
    const m = $('decisions-msg');
    try {
      const r = await fetch('/decisions?limit=' + DECISIONS, { cache: 'no-store' });
      if (!r.ok) {
        let why = '';
        try {
          const b = await r.json();
          if (typeof b.message === 'string') why = ': ' + b.message;
        } catch (e) {
          why = '';
        }
        m.textContent = 'Decision log unavailable (GET /decisions answered ' + r.status + why +
          '); showing the last rows read';
        return;
      }
      const d = await r.json();
      m.textContent = '';
      const list = Array.isArray(d.decisions) ? d.decisions : [];
      const key = list.map((x) => x.id).join(' ');
      if (key === decisionsKey) return; // unchanged: keep the rows (and a text selection)
      decisionsKey = key;
      fill($('decisions'), list, decisionRow, 'no decisions yet');
    } catch (e) {
      m.textContent = 'Decision log unavailable: ' + e.message;
    }
  }

  // ---- the loop -----------------------------------------------------------------------
  // One poll at a time: a poll asked for while one runs (a reset's) runs
  // right after it, so there is only ever one timer.
  async function poll() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    clearTimeout(timer);
    try {
      await Promise.all([pollStatus(), pollDecisions()]);
    } finally {
      busy = false;
    }
    if (again) {
      again = false;
      poll();
      return;
    }
    timer = setTimeout(poll, POLL_MS);
  }

  async function pollStatus() {
    const err = $('conn-error');
    try {
      const r = await fetch('/status.json', { cache: 'no-store' });
      if (!r.ok) throw new Error('GET /status.json answered ' + r.status);
      const st = await r.json();
      show($('version'), st.version);
      show($('instance'), st.instance);
      show($('uptime'), age(st.uptime_seconds));
      renderSales(st.sales || {});
      renderKills(st.killswitch);
      renderRules(st.rules);
      renderHealth(st);
      show($('updated'), new Date().toLocaleTimeString());
      err.hidden = true;
      document.body.classList.remove('stale');
    } catch (e) {
      err.textContent = 'Cannot reach nerve: ' + e.message + ' (showing the last data)';
      err.hidden = false;
      document.body.classList.add('stale');
    }
  }

  tokenState();
  poll();
})();
