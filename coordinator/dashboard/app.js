// The coordinator's live dashboard. Plain browser JavaScript (no build step): it opens the
// coordinator's server-sent-event stream (/events) with the viewer token of its own URL, keeps
// the sampled timeline, and redraws the tables and the two uPlot charts at every tick.
/* global uPlot */
(() => {
  'use strict';
  const token = new URLSearchParams(location.search).get('token') || '';
  const $ = (id) => document.getElementById(id);
  const COLORS = ['#2b6cb0', '#c05621', '#2f855a', '#9b2c2c', '#6b46c1', '#b7791f', '#2c7a7b', '#97266d'];
  const MAX_SAMPLES = 1200;
  /** seconds over which cycles/s is measured */
  const RATE_WINDOW_S = 10;

  const state = { timeline: [], status: undefined, drops: [] };
  const charts = {};
  // Exposed for tests and for the curious: the charts and the latest data.
  window.__dashboard = { state, charts };

  const fmt = (x, digits) => (x === undefined || x === null || Number.isNaN(x) ? '–' : Number(x).toFixed(digits));
  const pct = (x) => (x === undefined || x === null ? '–' : `${(100 * x).toFixed(1)} %`);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const counts = (rec) => {
    const e = Object.entries(rec || {}).filter(([, n]) => n > 0);
    return e.length ? e.map(([k, n]) => `${esc(k)} ${n}`).join(', ') : '–';
  };
  const duration = (ms) => {
    const s = Math.floor(ms / 1000);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
  };

  function rate(pairId) {
    const tl = state.timeline;
    if (tl.length < 2) return undefined;
    const last = tl[tl.length - 1];
    let i = tl.length - 2;
    while (i > 0 && last.t - tl[i].t < RATE_WINDOW_S) i--;
    const first = tl[i];
    const dt = last.t - first.t;
    if (dt <= 0 || first.updates[pairId] === undefined) return undefined;
    return (last.updates[pairId] - first.updates[pairId]) / dt;
  }

  function renderTotals(st) {
    const t = st.totals;
    const items = [
      [`${t.connected} / ${t.devices}`, 'devices connected'],
      [t.registered, 'registered'],
      [`${st.pairs.filter((p) => p.active).length} / ${t.pairs}`, 'pairs active'],
      [t.cyclesStarted, 'cycles started'],
      [t.updates, 'adapter updates'],
      [t.inFlight, 'in flight'],
      [t.drops, 'drops'],
    ];
    if (t.queueDepth !== undefined) items.push([t.queueDepth, 'queue depth']);
    if (t.sliceIntervalMs) items.push([`${(t.sliceIntervalMs / 1000).toFixed(1)} s`, 'slice pace']);
    $('totals').innerHTML = items.map(([v, l]) => `<div><b>${esc(v)}</b><span>${esc(l)}</span></div>`).join('');
    $('where').textContent = `${st.url} · up ${duration(st.uptimeMs)}`;
  }

  function renderDevices(st) {
    $('devices-body').innerHTML = st.devices
      .map((d) => {
        const m = d.metrics || {};
        const stateCell = d.connected ? '<span class="ok">connected</span>' : d.registered ? '<span class="warn">offline</span>' : '<span class="dim">never seen</span>';
        const model = d.model ? `${esc(d.model.name)} <span class="dim">${esc(d.model.task)}</span>` : '–';
        const rejects = Object.values(d.rejects).reduce((a, b) => a + b, 0);
        return `<tr data-device="${esc(d.id)}"><td>${esc(d.id)}</td><td>${stateCell}</td><td>${model}</td>` +
          `<td class="num">${m.step ?? '–'}</td><td class="num">${fmt(m.stepsPerSec, 1)}</td><td class="num">${fmt(m.loss, 4)}</td>` +
          `<td class="num">${pct(m.valAcc)}</td><td class="num">${rejects || '–'}</td></tr>`;
      })
      .join('') || '<tr><td colspan="8" class="dim">no devices configured</td></tr>';
  }

  function gateCell(g) {
    if (!g) return '<span class="dim">–</span>';
    const cls = g.decision === 'accepted' ? 'ok' : g.decision === 'refused' ? 'bad' : 'warn';
    return `${fmt(g.value, 3)} <span class="dim">θ ${fmt(g.theta, 3)}</span> <span class="${cls}">${esc(g.decision)}</span>`;
  }

  function renderPairs(st) {
    $('pairs-body').innerHTML = st.pairs
      .map((p) => {
        const ends = `${esc(p.source.device)}.${esc(p.source.slot)} → ${esc(p.target.device)}.${esc(p.target.slot)}`;
        const stateCell = !p.active ? `<span class="bad" title="${esc(p.inactiveReason || '')}">inactive</span>` : p.inFlight ? '<span class="ok">cycling</span>' : '<span class="dim">waiting</span>';
        return `<tr data-pair="${esc(p.id)}"><td>${esc(p.id)}</td><td>${ends}${p.sourceMode === 'noise' ? ' <span class="warn">(noise)</span>' : ''}</td>` +
          `<td class="num">${p.rank}</td><td>${stateCell}</td><td class="num" data-col="cycles">${p.cyclesStarted}</td>` +
          `<td class="num">${fmt(rate(p.id), 2)}</td><td class="num" data-col="updates">${p.updates}</td><td>${gateCell(p.gate)}</td>` +
          `<td class="num">${fmt(p.branchRatio, 3)}</td><td>${counts(p.drops)}</td></tr>`;
      })
      .join('') || '<tr><td colspan="10" class="dim">no pairs yet</td></tr>';
  }

  function renderDrops() {
    const rows = state.drops.slice(-20).reverse();
    $('drops-body').innerHTML = rows.length
      ? rows.map((d) => `<tr><td>${esc(new Date(d.at).toLocaleTimeString())}</td><td>${esc(d.deviceId || '–')}</td><td>${esc(d.event)}</td>` +
          `<td class="bad">${esc(d.code)}</td><td>${esc(d.pairId || '–')}</td><td class="reason">${esc(d.reason)}</td></tr>`).join('')
      : '<tr><td colspan="6" class="dim">none</td></tr>';
  }

  /** (Re)draw a time chart of one series per key; recreated when the set of keys changes. */
  function drawChart(name, el, keys, valueOf, yRange, yLabel) {
    const tl = state.timeline;
    const data = [tl.map((s) => s.t), ...keys.map((k) => tl.map((s) => { const v = valueOf(s, k); return v === undefined ? null : v; }))];
    const width = Math.max(300, el.clientWidth);
    let c = charts[name];
    if (c && c.keys.join('\n') !== keys.join('\n')) {
      c.plot.destroy();
      c = undefined;
    }
    if (!c) {
      const opts = {
        width,
        height: 230,
        scales: { x: { time: true }, y: yRange ? { range: yRange } : { auto: true } },
        series: [{}, ...keys.map((k, i) => ({ label: k, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true, points: { show: false } }))],
        axes: [{}, { label: yLabel, size: 60 }],
        legend: { live: true },
      };
      c = charts[name] = { keys, plot: new uPlot(opts, data, el) };
    } else {
      c.plot.setData(data);
    }
    el.dataset.points = String(tl.length);
    el.dataset.last = JSON.stringify(data.slice(1).map((s) => s[s.length - 1]));
  }

  function render() {
    const st = state.status;
    if (!st) return;
    renderTotals(st);
    renderDevices(st);
    renderPairs(st);
    renderDrops();
    drawChart('acc', $('acc-chart'), st.devices.map((d) => d.id), (s, k) => s.acc[k], [0, 1], 'held-out accuracy');
    drawChart('cycles', $('cycles-chart'), st.pairs.map((p) => p.id), (s, k) => s.updates[k], undefined, 'completed cycles');
  }

  function live(on, text) {
    const el = $('live');
    el.className = `badge ${on ? 'on' : 'off'}`;
    el.textContent = text;
  }

  if (!token) {
    live(false, 'no token: open this page as /?token=<viewer token>');
    return;
  }
  const es = new EventSource(`/events?token=${encodeURIComponent(token)}`);
  es.addEventListener('hello', (ev) => {
    const msg = JSON.parse(ev.data);
    state.timeline = msg.timeline;
    state.status = msg.status;
    state.drops = msg.drops;
    live(true, 'live');
    render();
  });
  es.addEventListener('tick', (ev) => {
    const msg = JSON.parse(ev.data);
    state.timeline.push(msg.sample);
    if (state.timeline.length > MAX_SAMPLES) state.timeline = state.timeline.filter((_, i) => i % 2 === 0);
    state.status = msg.status;
    state.drops = msg.drops;
    live(true, 'live');
    render();
  });
  // EventSource reconnects by itself; say so while it does.
  es.onerror = () => live(false, 'reconnecting…');
  window.addEventListener('resize', () => {
    for (const c of Object.values(charts)) c.plot.setSize({ width: Math.max(300, c.plot.root.parentElement.clientWidth), height: 230 });
  });
})();
