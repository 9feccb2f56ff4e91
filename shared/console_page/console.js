'use strict';
// The operator console. Everything it shows comes from the gateway's operator JSON routes.
//
// The page itself is public and holds no secret. It reads the operator routes one of two ways:
// - with the admin key, which the operator types into the page's form. The key is kept in this
//   tab's sessionStorage (gone when the tab closes, never shared with other tabs or written to
//   disk as localStorage is) and sent as x-functions-key on the page's own requests only. A key
//   that came in the address (?code=, as older links had it) is moved there and removed from
//   the address before anything else happens, so it is not in the address bar, a reload, a
//   bookmark or a shared link; the request that brought it has already shown it to the network.
// - without any key, under signed-in/, when App Service Authentication signed the operator in
//   with Microsoft Entra ID and the gateway lists them (OPERATOR_PRINCIPAL_IDS).
(function () {
  const KEY_ITEM = 'mailgate-admin-key';
  const MAX_KEY_LENGTH = 512;
  const keyStore = tabStorage();
  const keyFromAddress = takeKeyFromAddress();
  if (keyFromAddress) keyStore.set(keyFromAddress);
  let adminKey = keyStore.get();
  // 'key': the admin key; 'signed-in': the platform's sign-in; 'none': neither yet.
  let access = adminKey ? 'key' : 'none';
  const REFRESH_MS = 5000;
  const SVG = 'http://www.w3.org/2000/svg';
  const COUNTED = ['sent', 'retried', 'failed'];
  const OUTCOME_LABELS = {
    sent: 'sent',
    retrying: 'attempt failed, retry scheduled',
    failed: 'dead-lettered',
  };
  // shared/replay_advice.py: whether a replay can help a failed message.
  const REPLAY_LABELS = {
    helps: 'a replay can help',
    after_fix: 'replay after a fix',
    no: 'a replay will not help',
  };

  let lastPoisonDepth = null;
  let deadLettersLoading = null;
  let shownId = null;

  function takeKeyFromAddress() {
    const address = new URL(window.location.href);
    if (!address.searchParams.has('code')) return null;
    const key = address.searchParams.get('code');
    address.searchParams.delete('code');
    const rest = address.pathname + address.search + address.hash;
    window.history.replaceState(window.history.state, '', rest);
    return key;
  }

  function tabStorage() {
    // A browser that refuses storage keeps the key for this page view only.
    let held = null;
    return {
      get() {
        try {
          return window.sessionStorage.getItem(KEY_ITEM) || held;
        } catch (refused) {
          return held;
        }
      },
      set(key) {
        held = key;
        try {
          window.sessionStorage.setItem(KEY_ITEM, key);
        } catch (refused) {
          // held above
        }
      },
      forget() {
        held = null;
        try {
          window.sessionStorage.removeItem(KEY_ITEM);
        } catch (refused) {
          // nothing was stored
        }
      },
    };
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function element(tag, options, children) {
    const node = document.createElement(tag);
    const given = options || {};
    if (given.className) node.className = given.className;
    if (given.text !== undefined && given.text !== null) node.textContent = String(given.text);
    if (given.title) node.title = given.title;
    for (const [name, value] of Object.entries(given.data || {})) node.dataset[name] = value;
    for (const child of children || []) node.append(child);
    return node;
  }

  function svgElement(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, String(value));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function pad(number) {
    return String(number).padStart(2, '0');
  }

  function formatTime(iso) {
    if (!iso) return '';
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
      `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  function hoursMinutes(iso) {
    const date = new Date(iso);
    return `${pad(date.getHours())}:${pad(date.getMinutes())}`;
  }

  function replayLabel(advice) {
    return REPLAY_LABELS[advice.replay] || String(advice.replay);
  }

  // The advice of a dead letter or a failed status record, if it has one: 'replay after a fix:
  // Verify the sender in SendGrid...'; only the label when `short`.
  function hintText(advice, short) {
    if (!advice || !advice.replay) return '';
    return short ? replayLabel(advice) : `${replayLabel(advice)}: ${advice.action || ''}`;
  }

  function errorText(lastError, short) {
    const code = lastError.status_code === null ? 'no answer' : lastError.status_code;
    const unsure = lastError.ambiguous ? ' (SendGrid may have accepted it)' : '';
    const hint = hintText(lastError, short);
    return `${code}: ${lastError.reason || ''}${unsure}${hint ? ` (${hint})` : ''}`;
  }

  function notice(text, problem) {
    const box = byId('notice');
    box.textContent = text;
    box.classList.toggle('problem', Boolean(problem));
    box.hidden = false;
  }

  async function request(path, init, key) {
    const headers = { Accept: 'application/json' };
    if (key) headers['x-functions-key'] = key;
    const options = Object.assign({ cache: 'no-store', credentials: 'same-origin' }, init || {});
    options.headers = Object.assign(headers, (init && init.headers) || {});
    const response = await fetch(path, options);
    const type = response.headers.get('content-type') || '';
    const body = type.includes('json') ? await response.json() : null;
    return { response, body };
  }

  async function api(path, init) {
    if (access === 'none') {
      const error = new Error('no admin key yet');
      error.status = 401;
      throw error;
    }
    const signedIn = access === 'signed-in';
    const { response, body } = await request(
      signedIn ? `signed-in/${path}` : path, init, signedIn ? null : adminKey);
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : response.statusText;
      const error = new Error(`${response.status} ${detail}`);
      error.status = response.status;
      if (response.status === 401) lostAccess(signedIn);
      throw error;
    }
    return body;
  }

  // -- access: the admin key, or the platform's sign-in --

  function showAccess() {
    byId('access').textContent = access === 'key' ? 'with the admin key (this tab only)'
      : access === 'signed-in' ? 'signed in with Microsoft Entra ID' : '';
    byId('forget-key').hidden = access !== 'key';
    byId('sign-out').hidden = access !== 'signed-in';
    byId('key-form').hidden = access !== 'none';
    byId('main').hidden = access === 'none';
  }

  function askForKey(why) {
    access = 'none';
    showAccess();
    byId('updated').textContent = '';
    if (why) notice(why, true);
    byId('key-input').focus();
  }

  function lostAccess(signedIn) {
    if (signedIn) {
      notice('The sign-in has expired: reload the page to sign in again.', true);
      return;
    }
    adminKey = null;
    keyStore.forget();
    askForKey('The admin key was refused: enter the key again.');
  }

  function stateBadge(state) {
    return element('span', { className: `state state-${state}`, text: state, data: { state } });
  }

  function idButton(id) {
    const button = element('button', { className: 'link mono', text: id, title: 'Show timeline' });
    button.type = 'button';
    button.addEventListener('click', () => {
      byId('search-id').value = id;
      showTimeline(id);
    });
    return button;
  }

  // -- the summary: depths, chart, latest messages --

  function niceCeiling(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 5, 10]) {
      if (step * power >= value) return step * power;
    }
    return 10 * power;
  }

  function renderChart(minutes) {
    const width = 720;
    const height = 190;
    const left = 34;
    const right = 8;
    const top = 10;
    const bottom = 24;
    const plotWidth = width - left - right;
    const plotHeight = height - top - bottom;
    const busiest = Math.max(1, ...minutes.map((m) => m.sent + m.retried + m.failed));
    const scale = niceCeiling(busiest);
    const chart = svgElement('svg', {
      id: 'chart-svg',
      viewBox: `0 0 ${width} ${height}`,
      role: 'img',
      'aria-label': 'Messages sent, retried and failed per minute over the last hour',
    });
    const marks = scale % 2 === 0 ? [0, scale / 2, scale] : [0, scale];
    for (const mark of marks) {
      const y = top + plotHeight - (mark / scale) * plotHeight;
      chart.append(svgElement('line', { class: 'axis', x1: left, x2: width - right, y1: y, y2: y }));
      chart.append(svgElement('text', { x: left - 6, y: y + 4, 'text-anchor': 'end' }, String(mark)));
    }
    const slot = plotWidth / minutes.length;
    minutes.forEach((minute, index) => {
      const x = left + index * slot;
      const group = svgElement('g', { class: 'minute', 'data-minute': minute.minute });
      group.append(svgElement('title', {},
        `${hoursMinutes(minute.minute)}: ${minute.sent} sent, ${minute.retried} retried, ` +
        `${minute.failed} failed`));
      // The whole column answers a hover, even in a minute with nothing in it.
      group.append(svgElement('rect', {
        x, y: top, width: slot, height: plotHeight, fill: 'transparent',
      }));
      let y = top + plotHeight;
      for (const name of COUNTED) {
        const barHeight = (minute[name] / scale) * plotHeight;
        if (barHeight > 0) {
          y -= barHeight;
          group.append(svgElement('rect', {
            class: `bar-${name}`, x: x + 1, y, width: Math.max(slot - 2, 1), height: barHeight,
          }));
        }
      }
      chart.append(group);
    });
    for (const index of [0, 15, 30, 45, minutes.length - 1]) {
      const x = left + index * slot + slot / 2;
      const anchor = index === 0 ? 'start' : index === minutes.length - 1 ? 'end' : 'middle';
      chart.append(svgElement('text', { x, y: height - 6, 'text-anchor': anchor },
        hoursMinutes(minutes[index].minute)));
    }
    byId('chart').replaceChildren(chart);
  }

  function renderLatest(messages) {
    const rows = messages.map((message) => element('tr', { data: { id: message.id } }, [
      element('td', { className: 'id' }, [idButton(message.id)]),
      element('td', { className: 'state-cell' }, [stateBadge(message.status)]),
      element('td', { text: message.attempts }),
      element('td', { text: message.client || '–' }),
      element('td', { text: formatTime(message.updated_at), title: message.updated_at }),
      element('td', { text: message.last_error ? errorText(message.last_error, true) : '' }),
    ]));
    byId('latest').tBodies[0].replaceChildren(...rows);
    byId('latest-empty').hidden = rows.length > 0;
  }

  function renderSummary(summary) {
    byId('depth-mail').textContent = summary.queues.mail.depth;
    byId('name-mail').textContent = summary.queues.mail.name;
    byId('depth-poison').textContent = summary.queues.poison.depth;
    byId('name-poison').textContent = summary.queues.poison.name;
    for (const name of COUNTED) {
      const total = summary.minutes.reduce((sum, minute) => sum + minute[name], 0);
      byId(`total-${name}`).textContent = total;
    }
    const activity = summary.activity;
    byId('coverage').textContent = activity.complete
      ? `since ${formatTime(activity.covers_from)}`
      : `only since ${formatTime(activity.covers_from)}: more than ${activity.limit} ` +
        'outcomes in the hour, the newest read';
    renderChart(summary.minutes);
    renderLatest(summary.latest);
    byId('updated').textContent = `updated ${formatTime(summary.generated_at)}`;
  }

  async function refresh() {
    try {
      const summary = await api('v1/console/summary');
      renderSummary(summary);
      // Listing the poison queue reads every message in it: only when it changed.
      if (summary.queues.poison.depth !== lastPoisonDepth) {
        lastPoisonDepth = summary.queues.poison.depth;
        await loadDeadLetters();
      }
    } catch (error) {
      // Lost access has said so already (and asks for the key).
      if (access !== 'none') notice(`The summary could not be read: ${error.message}`, true);
    }
  }

  // -- dead letters --

  // A listing goes through at most this many poison messages a call; "Show more" goes on.
  const DEAD_LETTER_PAGE = 100;
  let deadLettersNext = null;

  function deadLetterRow(letter) {
    const replay = element('button', { className: 'replay', text: 'Replay' });
    replay.type = 'button';
    replay.disabled = !letter.replayable || !letter.id;
    if (letter.replay) replay.title = hintText(letter);
    if (!replay.disabled) replay.addEventListener('click', () => replayOne(letter.id, replay));
    const reason = [element('span', { text: letter.reason })];
    if (letter.replay) {
      reason.push(element('span', { className: `hint replay-${letter.replay}`, text: hintText(letter) }));
    }
    return element('tr', { data: { id: letter.id || '' } }, [
      element('td', { className: 'id' }, [letter.id ? idButton(letter.id) : element('span', { text: '(no id)' })]),
      element('td', { className: 'reason' }, reason),
      element('td', { text: letter.attempts === null ? '' : letter.attempts }),
      element('td', { text: formatTime(letter.dead_lettered_at), title: letter.dead_lettered_at || '' }),
      element('td', {}, [replay]),
    ]);
  }

  function renderDeadLetters(page, append) {
    const body = byId('dead-letters').tBodies[0];
    const rows = page.dead_letters.map(deadLetterRow);
    if (append) body.append(...rows);
    else body.replaceChildren(...rows);
    byId('dead-empty').hidden = body.rows.length > 0;
    deadLettersNext = page.continuation;
    byId('dead-more').hidden = !deadLettersNext;
  }

  function loadDeadLetters(more) {
    // One listing at a time: a call holds the poison messages it reads for a moment, and a
    // second one running meanwhile would not see them.
    if (!deadLettersLoading && (!more || deadLettersNext)) {
      const query = new URLSearchParams({ limit: String(DEAD_LETTER_PAGE) });
      if (more) query.set('continuation', deadLettersNext);
      deadLettersLoading = api(`v1/dead-letters?${query}`)
        .then((page) => renderDeadLetters(page, more))
        .catch((error) => {
          if (access !== 'none') notice(`The dead letters could not be read: ${error.message}`, true);
        })
        .finally(() => {
          deadLettersLoading = null;
        });
    }
    return deadLettersLoading;
  }

  async function replayOne(id, button) {
    button.disabled = true;
    button.textContent = 'Replaying…';
    if (deadLettersLoading) await deadLettersLoading;
    try {
      // The replay walks the poison queue a call at a time until it meets the id.
      const done = [];
      const skipped = {};
      let continuation = null;
      do {
        const selection = continuation ? { ids: [id], continuation } : { ids: [id] };
        const report = await api('v1/dead-letters/replay', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify(selection),
        });
        done.push(...report.done);
        Object.assign(skipped, report.skipped);
        continuation = report.continuation;
      } while (continuation);
      if (done.includes(id)) {
        notice(`Replayed ${id}: it is on the mail queue again.`);
      } else if (skipped[id]) {
        notice(`${id} was not replayed: ${skipped[id]}.`, true);
      } else {
        notice(`${id} was not replayed: it is no longer in the poison queue.`, true);
      }
    } catch (error) {
      notice(`The replay of ${id} failed: ${error.message}`, true);
    }
    await loadDeadLetters();
    await refresh();
    if (shownId === id) await showTimeline(id);
  }

  // -- one message's timeline --

  function fromTimelineEntry(entry) {
    // Entries that other parts of the gateway add to the status record (SendGrid's events,
    // say): shown with whatever they carry.
    if (entry === null || typeof entry !== 'object') {
      return { at: null, label: String(entry), kind: 'other', detail: '' };
    }
    const timeKeys = ['at', 'time', 'timestamp'];
    const labelKeys = ['event', 'type', 'state', 'status'];
    const at = timeKeys.map((key) => entry[key]).find((value) => value !== undefined);
    const label = labelKeys.map((key) => entry[key]).find((value) => value !== undefined);
    const detail = Object.entries(entry)
      .filter(([key]) => !timeKeys.includes(key) && !labelKeys.includes(key))
      .map(([key, value]) => `${key}: ${typeof value === 'object' ? JSON.stringify(value) : value}`)
      .join(' · ');
    return {
      at: typeof at === 'number' ? new Date(at * 1000).toISOString() : at || null,
      label: label === undefined ? 'event' : String(label),
      kind: label === undefined ? 'other' : String(label),
      detail,
    };
  }

  function timelineEntries(record) {
    const status = record.status;
    const entries = [{
      at: status.accepted_at,
      label: 'accepted',
      kind: 'queued',
      detail: status.client ? `from client ${status.client}` : '',
    }];
    for (const event of record.activity) {
      entries.push({
        at: event.at,
        label: `${OUTCOME_LABELS[event.state] || event.state} (attempt ${event.attempt})`,
        kind: event.state,
        detail: '',
      });
    }
    for (const entry of Array.isArray(status.timeline) ? status.timeline : []) {
      entries.push(fromTimelineEntry(entry));
    }
    const details = [];
    if (status.last_error) details.push(`last error ${errorText(status.last_error)}`);
    if (status.next_attempt_at) details.push(`next attempt ${formatTime(status.next_attempt_at)}`);
    if (status.provider) details.push(`sent by ${status.provider}`);
    if (status.sendgrid_message_id) details.push(`SendGrid id ${status.sendgrid_message_id}`);
    else if (status.provider_message_id) details.push(`id ${status.provider_message_id}`);
    if (Array.isArray(status.providers_tried) && status.providers_tried.length) {
      details.push(`tried ${status.providers_tried.join(', ')}`);
    }
    if (Array.isArray(status.providers_skipped) && status.providers_skipped.length) {
      details.push(`skipped ${status.providers_skipped.join(', ')} (circuit breaker open)`);
    }
    const when = (entry) => (entry.at ? Date.parse(entry.at) : Number.MAX_SAFE_INTEGER);
    entries.sort((a, b) => when(a) - when(b));
    // The record as it stands now, after everything above.
    entries.push({
      at: status.updated_at,
      label: `${status.status} now, after ${status.attempts} attempt(s)`,
      kind: status.status,
      detail: details.join(' · '),
    });
    return entries;
  }

  function renderTimeline(record) {
    const status = record.status;
    const items = timelineEntries(record).map((entry) => element('li', {
      className: `event-${entry.kind}`,
    }, [
      element('span', { className: 'when', text: formatTime(entry.at), title: entry.at || '' }),
      element('span', { className: 'what', text: entry.label }),
      element('span', { className: 'detail', text: entry.detail }),
    ]));
    return [
      element('h3', {}, [
        element('span', { className: 'mono', text: `${status.id} ` }),
        stateBadge(status.status),
      ]),
      element('ol', {}, items),
      element('p', {
        className: 'muted',
        text: 'The record keeps its latest 20 outcomes.',
      }),
    ];
  }

  async function showTimeline(id) {
    shownId = id;
    const panel = byId('timeline');
    panel.hidden = false;
    panel.dataset.id = id;
    panel.dataset.state = '';
    panel.replaceChildren(element('p', { className: 'muted', text: `Looking up ${id}…` }));
    try {
      const record = await api(`v1/console/messages/${encodeURIComponent(id)}`);
      if (shownId !== id) return;
      panel.dataset.state = record.status.status;
      panel.replaceChildren(...renderTimeline(record));
    } catch (error) {
      if (shownId !== id) return;
      panel.replaceChildren(element('p', {
        text: error.status === 404 ? `No message has the id ${id}.`
          : `The message could not be read: ${error.message}`,
      }));
    }
  }

  // -- start --

  byId('search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const id = byId('search-id').value.trim();
    if (id) showTimeline(id);
  });
  byId('dead-more').addEventListener('click', () => loadDeadLetters(true));
  byId('refresh').addEventListener('click', () => {
    lastPoisonDepth = null;
    refresh();
  });
  byId('key-form').addEventListener('submit', (event) => {
    // Never submitted natively (the policy's form-action 'none' would stop it anyway): the key
    // must not end up in an address.
    event.preventDefault();
    const input = byId('key-input');
    const key = input.value.trim();
    input.value = '';
    if (!key || key.length > MAX_KEY_LENGTH) return;
    adminKey = key;
    keyStore.set(key);
    access = 'key';
    byId('notice').hidden = true;
    showAccess();
    lastPoisonDepth = null;
    refresh();
  });
  byId('forget-key').addEventListener('click', () => {
    adminKey = null;
    keyStore.forget();
    lastPoisonDepth = null;
    askForKey('The admin key is forgotten: this tab no longer holds it.');
  });

  async function findSignIn() {
    // No key in this tab: the platform may have signed the operator in.
    try {
      const { response, body } = await request('signed-in/v1/console/summary');
      if (response.ok) {
        access = 'signed-in';
        return;
      }
      // 401: no sign-in here (or none configured); 403 and 503 say what is wrong with it.
      const detail = response.status === 401 ? null : (body && body.detail) || response.statusText;
      askForKey(detail ? `The sign-in was not accepted: ${detail}` : null);
    } catch (error) {
      askForKey(null);
    }
  }

  async function tick() {
    if (!document.hidden && access !== 'none') await refresh();
    window.setTimeout(tick, REFRESH_MS);
  }

  async function start() {
    if (access === 'none') await findSignIn();
    showAccess();
    tick();
  }
  start();
}());
