// The Keysmith dashboard. Plain JavaScript, no build step.
//
// Rules this file keeps:
// - The admin key lives in sessionStorage only (never a URL, a cookie or
//   persistent storage) and is sent only to the admin API, as a Bearer token.
// - Every piece of text from the API reaches the page through textContent
//   or a Text node (see `el`): key names and metadata are chosen by whoever
//   can create keys, so nothing here parses HTML.
// - The page can do only what the API allows: every action is one API call,
//   and the API's own message is what the user sees when it refuses.
'use strict';

(() => {
  const TOKEN = 'keysmith.adminKey';
  const PAGE_SIZE = 20;
  const EXPIRING_SOON_DAYS = 7;
  const CHART_DAYS = 30;
  const CHART_HOURS = 24;
  const DAY_MS = 86400000;
  const HOUR_MS = 3600000;
  const STATES = ['active', 'suspended', 'rotated', 'revoked', 'expired'];
  const ENVIRONMENTS = ['live', 'test', 'dev'];
  const REASONS = ['manual', 'scheduled', 'expiring', 'compromised'];

  const baseText = document.querySelector('meta[name="keysmith-api-base"]').content || '../v1';
  const apiBase = new URL(baseText.replace(/\/*$/, '/'), document.baseURI);
  const main = document.getElementById('main');
  const banner = document.getElementById('error');
  const nav = document.getElementById('nav');
  const signOutButton = document.getElementById('sign-out');
  let renderSeq = 0;

  // ---- DOM helpers ---------------------------------------------------------

  /** An element with attributes and children; strings become Text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'class') node.setAttribute('class', value);
      else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function show(...nodes) {
    main.replaceChildren(...nodes.flat().filter(Boolean));
  }

  // ---- formatting ----------------------------------------------------------

  const DASH = '—';
  const number = (n) => Number(n).toLocaleString('en-US');

  function time(iso) {
    if (!iso) return DASH;
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    return date.toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return DASH;
    const units = [['d', 86400], ['h', 3600], ['min', 60]];
    for (const [unit, size] of units) {
      if (seconds >= size && seconds % size === 0) return `${number(seconds / size)} ${unit}`;
    }
    return `${number(seconds)} s`;
  }

  function dayLabel(date) {
    return date.toLocaleDateString('en-US', { month: 'short', day: 'numeric', timeZone: 'UTC' });
  }

  function monthLabel(iso) {
    return new Date(iso).toLocaleDateString('en-US', { month: 'long', year: 'numeric', timeZone: 'UTC' });
  }

  function list(items) {
    return items && items.length ? items.join(', ') : DASH;
  }

  function chips(items, empty = DASH) {
    if (!items || !items.length) return el('span', { class: 'muted' }, empty);
    return el('span', { class: 'chips' }, items.map((item) => el('span', { class: 'chip' }, item)));
  }

  function stateBadge(state) {
    return el('span', { class: `badge state-${STATES.includes(state) ? state : 'unknown'}`, 'data-state': state }, state);
  }

  // A key reported by GitHub secret scanning is revoked or suspended with
  // this reason prefix, followed by the URL where it was found.
  const LEAK_PREFIX = 'leaked: ';

  /** Where a leaked key was found (text, never a link), or null. */
  function leakUrl(key) {
    const reason = key.revoked_reason;
    if (!reason || !reason.startsWith(LEAK_PREFIX) || !['revoked', 'suspended'].includes(key.state)) return null;
    return reason.slice(LEAK_PREFIX.length);
  }

  /** A "leaked" badge for a key reported by secret scanning, else nothing. */
  function leakBadge(key) {
    return leakUrl(key) === null ? null : el('span', { class: 'badge leaked', 'data-leaked': '' }, 'leaked');
  }

  /** "expires soon" or "past expiry" for an active key, else nothing. */
  function expiryNote(key) {
    if (!key.expires_at || key.state !== 'active') return null;
    const left = new Date(key.expires_at).getTime() - Date.now();
    if (left <= 0) return el('span', { class: 'badge warn' }, 'past expiry');
    if (left <= EXPIRING_SOON_DAYS * DAY_MS) {
      const days = Math.max(1, Math.ceil(left / DAY_MS));
      return el('span', { class: 'badge warn', 'data-expiring-soon': '' }, `expires in ${days} d`);
    }
    return null;
  }

  const keyLink = (id, text) => el('a', { href: `#/keys/${encodeURIComponent(id)}` }, text || id);

  // ---- the API -------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** One call to the admin API; throws ApiError with the API's message. */
  async function api(method, path, body) {
    const token = sessionStorage.getItem(TOKEN);
    if (!token) {
      signOut('Sign in with an admin key.');
      throw Object.assign(new ApiError(401, 'missing_key', 'Sign in with an admin key.'), { signedOut: true });
    }
    const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL(path, apiBase), init);
    } catch (error) {
      throw new ApiError(0, 'unreachable', `The admin API cannot be reached (${error.message}).`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const detail = data && data.error ? data.error : {};
      const message = detail.message || `The admin API answered ${response.status}.`;
      const error = new ApiError(response.status, detail.code || `http_${response.status}`, message);
      if (response.status === 401 || response.status === 403) {
        signOut(message);
        error.signedOut = true;
      }
      throw error;
    }
    return data;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== '') search.set(name, value);
    }
    const text = search.toString();
    return text ? `?${text}` : '';
  }

  // ---- messages --------------------------------------------------------------

  function showError(error) {
    if (error && error.signedOut) return;
    banner.textContent = error instanceof Error ? error.message : String(error);
    banner.hidden = false;
    banner.scrollIntoView({ block: 'nearest' });
  }

  function clearError() {
    banner.hidden = true;
    banner.textContent = '';
  }

  /** Runs an action, showing its failure; returns its result or undefined. */
  async function attempt(action) {
    clearError();
    try {
      return await action();
    } catch (error) {
      showError(error);
      return undefined;
    }
  }

  // ---- session ---------------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(TOKEN);
    renderSeq += 1;
    if (location.hash && location.hash !== '#/') history.replaceState(null, '', location.pathname + location.search);
    renderSignIn(message);
  }

  function renderSignIn(message) {
    nav.hidden = true;
    signOutButton.hidden = true;
    clearError();
    const input = el('input', {
      id: 'admin-key', name: 'admin-key', type: 'password', autocomplete: 'off', spellcheck: 'false',
      required: true, placeholder: 'sk_live_…',
    });
    const notice = message ? el('p', { class: 'banner error', role: 'alert' }, message) : null;
    const form = el('form', {
      class: 'card signin', method: 'post', action: '#',
      onsubmit: async (event) => {
        event.preventDefault();
        const key = input.value.trim();
        input.value = '';
        if (!key) return;
        sessionStorage.setItem(TOKEN, key);
        const ok = await attempt(() => api('GET', 'keys?limit=1'));
        if (ok) {
          if (location.hash === '#/keys') route();
          else location.hash = '#/keys';
        }
      },
    },
    el('h1', {}, 'Sign in'),
    el('p', { class: 'muted' },
      'Paste an API key holding the ', el('code', {}, 'keysmith:admin'),
      ' scope. It is kept in this tab only and forgotten when you sign out or close the tab.'),
    notice,
    el('label', { for: 'admin-key' }, 'Admin key'),
    input,
    el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Sign in')));
    show(el('div', { class: 'center' }, form));
    input.focus();
  }

  signOutButton.addEventListener('click', () => signOut());

  // ---- routing ---------------------------------------------------------------

  function route() {
    clearError();
    const seq = ++renderSeq;
    if (!sessionStorage.getItem(TOKEN)) {
      renderSignIn();
      return;
    }
    nav.hidden = false;
    signOutButton.hidden = false;
    const hash = location.hash.replace(/^#\/?/, '');
    const [path, search = ''] = hash.split('?');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    const section = parts[0] || 'keys';
    for (const link of nav.querySelectorAll('a')) {
      link.classList.toggle('current', link.dataset.nav === section);
    }
    const current = () => seq === renderSeq;
    if (section === 'keys' && parts[1]) renderKey(parts[1], current);
    else if (section === 'policies') renderPolicies(current);
    else if (section === 'scopes') renderScopes(current);
    else renderKeys(new URLSearchParams(search), current);
  }

  window.addEventListener('hashchange', route);

  /**
   * The answers a view needs, or null when the view was left meanwhile or a
   * request failed (then `heading` and the API's message are shown).
   */
  async function load(current, heading, requests) {
    try {
      const answers = await Promise.all(requests);
      return current() ? answers : null;
    } catch (error) {
      if (current()) {
        show(heading);
        showError(error);
      }
      return null;
    }
  }

  // ---- keys ------------------------------------------------------------------

  function keysHash(params) {
    const text = params.toString();
    return text ? `#/keys?${text}` : '#/keys';
  }

  async function loadPolicies() {
    try {
      const page = await api('GET', 'policies?limit=1000');
      return page.items;
    } catch (error) {
      if (error.signedOut) throw error;
      return [];
    }
  }

  async function renderKeys(params, current) {
    const offset = Math.max(0, Number.parseInt(params.get('offset') || '0', 10) || 0);
    const filters = {
      state: params.get('state') || '',
      environment: params.get('environment') || '',
      owner_id: params.get('owner_id') || '',
    };
    const loaded = await load(current, el('h1', {}, 'API keys'), [
      api('GET', `keys${query({ ...filters, limit: PAGE_SIZE + 1, offset })}`),
      loadPolicies(),
    ]);
    if (!loaded) return;
    const [page, policies] = loaded;
    const policyNames = new Map(policies.map((policy) => [policy.id, policy.name]));
    const keys = page.items.slice(0, PAGE_SIZE);
    const hasNext = page.items.length > PAGE_SIZE;
    const ownersKnown = Boolean(filters.owner_id) || page.items.some((key) => 'owner_id' in key);

    const secretSlot = el('div');
    const createForm = createKeyForm(policies, secretSlot);
    const newButton = el('button', {
      type: 'button',
      onclick: () => {
        createForm.hidden = !createForm.hidden;
        if (!createForm.hidden) createForm.querySelector('input').focus();
      },
    }, 'New key');

    const setFilter = (name, value) => {
      const next = new URLSearchParams(params);
      if (value) next.set(name, value);
      else next.delete(name);
      next.delete('offset');
      location.hash = keysHash(next);
    };
    const select = (name, label, values) => el('label', { class: 'filter' }, label,
      el('select', { name, onchange: (event) => setFilter(name, event.target.value) },
        el('option', { value: '' }, 'any'),
        values.map((value) => el('option', { value, selected: filters[name] === value }, value))));
    const ownerFilter = ownersKnown ? el('form', {
      class: 'filter',
      onsubmit: (event) => {
        event.preventDefault();
        setFilter('owner_id', event.target.elements.owner_id.value.trim());
      },
    }, el('label', {}, 'Owner', el('input', { name: 'owner_id', value: filters.owner_id, placeholder: 'owner id' }))) : null;

    const rows = keys.map((key) => el('tr', { 'data-key-id': key.id, class: expiryNote(key) ? 'expiring' : null },
      el('td', {}, keyLink(key.id, key.name)),
      el('td', {}, el('code', {}, key.hint)),
      el('td', {}, stateBadge(key.state), leakBadge(key) ? ' ' : null, leakBadge(key)),
      el('td', {}, key.environment),
      el('td', {}, key.owner_id || DASH),
      el('td', {}, key.policy_id ? policyNames.get(key.policy_id) || key.policy_id : DASH),
      el('td', {}, chips(key.scopes)),
      el('td', { class: 'nowrap' }, time(key.last_used_at)),
      el('td', { class: 'nowrap' }, time(key.expires_at), expiryNote(key) ? el('br') : null, expiryNote(key))));
    if (!rows.length) {
      rows.push(el('tr', {}, el('td', { colspan: 9, class: 'empty' },
        Object.values(filters).some(Boolean) ? 'No keys match these filters.' : 'No keys yet. Create one with “New key”.')));
    }
    const table = el('table', { 'data-testid': 'keys-table' },
      el('thead', {}, el('tr', {}, ['Name', 'Hint', 'State', 'Environment', 'Owner', 'Policy', 'Scopes', 'Last used', 'Expires']
        .map((title) => el('th', { scope: 'col' }, title)))),
      el('tbody', {}, rows));

    const pageLink = (label, to, enabled) => {
      const next = new URLSearchParams(params);
      if (to > 0) next.set('offset', String(to));
      else next.delete('offset');
      return enabled
        ? el('a', { class: 'button secondary', href: keysHash(next), rel: label === 'Next' ? 'next' : 'prev' }, label)
        : el('span', { class: 'button secondary disabled', 'aria-disabled': 'true' }, label);
    };
    const pager = el('div', { class: 'pager' },
      el('span', { class: 'muted' }, keys.length ? `Keys ${number(offset + 1)}–${number(offset + keys.length)}` : ''),
      pageLink('Previous', Math.max(0, offset - PAGE_SIZE), offset > 0),
      pageLink('Next', offset + PAGE_SIZE, hasNext));

    show(
      el('div', { class: 'page-head' }, el('h1', {}, 'API keys'), newButton),
      createForm,
      secretSlot,
      el('div', { class: 'filters' }, select('state', 'State', STATES), select('environment', 'Environment', ENVIRONMENTS), ownerFilter),
      el('div', { class: 'card flush' }, table),
      pager,
    );
  }

  /** The panel that shows a new secret, this once. */
  function secretPanel(raw, keyId, title, linkText = 'Open the key’s page →') {
    const code = el('code', { 'data-testid': 'raw-key', class: 'secret-value' }, raw);
    const copied = el('span', { class: 'muted', 'aria-live': 'polite' });
    const copy = el('button', {
      type: 'button',
      class: 'secondary',
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(raw);
          copied.textContent = 'Copied.';
        } catch {
          const range = document.createRange();
          range.selectNodeContents(code);
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          copied.textContent = 'Selected: press Ctrl+C (⌘C) to copy.';
        }
      },
    }, 'Copy');
    return el('section', { class: 'card secret', 'data-testid': 'raw-key-panel' },
      el('h2', {}, title),
      el('p', { class: 'warning' }, el('strong', {}, 'Copy this key now: you will not see it again. '),
        'Keysmith stores only its hash, so neither this page nor the API can show it later.'),
      el('div', { class: 'secret-row' }, code, copy, copied),
      el('p', {}, keyLink(keyId, linkText)));
  }

  function field(label, control, hint) {
    return el('label', { class: 'field' }, el('span', { class: 'label' }, label), control,
      hint ? el('span', { class: 'hint' }, hint) : null);
  }

  function splitList(text) {
    return text.split(/[\s,]+/).map((item) => item.trim()).filter(Boolean);
  }

  function createKeyForm(policies, secretSlot) {
    const form = el('form', {
      class: 'card', 'data-testid': 'create-key', hidden: true,
      onsubmit: async (event) => {
        event.preventDefault();
        const values = form.elements;
        const body = { name: values.name.value.trim(), scopes: splitList(values.scopes.value) };
        if (values.environment.value) body.environment = values.environment.value;
        if (values.policy_id.value) body.policy_id = values.policy_id.value;
        if (values.expires.value) body.expires_at = `${values.expires.value}T00:00:00Z`;
        const created = await attempt(() => api('POST', 'keys', body));
        if (!created) return;
        form.reset();
        form.hidden = true;
        secretSlot.replaceChildren(secretPanel(created.raw_key, created.key.id, `Key “${created.key.name}” created`));
        await refreshKeysTable();
      },
    },
    el('h2', {}, 'New key'),
    el('div', { class: 'grid' },
      field('Name', el('input', { name: 'name', required: true, maxlength: 256, placeholder: 'CI deploy key' })),
      field('Scopes', el('input', { name: 'scopes', placeholder: 'read:users, write:orders' }), 'Comma- or space-separated.'),
      field('Environment', el('select', { name: 'environment' }, el('option', { value: '' }, 'default'),
        ENVIRONMENTS.map((value) => el('option', { value }, value)))),
      field('Policy', el('select', { name: 'policy_id' }, el('option', { value: '' }, 'none'),
        policies.map((policy) => el('option', { value: policy.id }, policy.name)))),
      field('Expires on', el('input', { name: 'expires', type: 'date' }), 'Optional; at 00:00 UTC.')),
    el('div', { class: 'actions' },
      el('button', { type: 'submit' }, 'Create key'),
      el('button', { type: 'button', class: 'secondary', onclick: () => { form.reset(); form.hidden = true; } }, 'Cancel')));
    return form;
  }

  /** Reloads the keys table in place, keeping a secret panel on screen. */
  async function refreshKeysTable() {
    const params = new URLSearchParams((location.hash.split('?')[1]) || '');
    const old = main.querySelector('[data-testid="raw-key-panel"]');
    const seq = renderSeq;
    await renderKeys(params, () => seq === renderSeq);
    if (old && seq === renderSeq) {
      const slot = main.querySelector('[data-testid="create-key"]').nextElementSibling;
      slot.replaceChildren(old);
    }
  }

  // ---- one key ---------------------------------------------------------------

  async function renderKey(id, current, secret) {
    const path = `keys/${encodeURIComponent(id)}`;
    const from = new Date(utcMidnight(Date.now()) - (CHART_DAYS - 1) * DAY_MS).toISOString();
    const fromHour = new Date(utcHour(Date.now()) - (CHART_HOURS - 1) * HOUR_MS).toISOString();
    const loaded = await load(current, el('p', {}, el('a', { href: '#/keys' }, '← All keys')), [
      api('GET', path),
      api('GET', `${path}/rotations`),
      api('GET', `${path}/usage/aggregate${query({ period: 'day', from })}`),
      api('GET', `${path}/usage/aggregate${query({ period: 'month' })}`),
      api('GET', `${path}/usage/aggregate${query({ period: 'hour', from: fromHour })}`),
      loadPolicies(),
    ]);
    if (!loaded) return;
    const [key, rotations, daily, monthly, hourly, policies] = loaded;
    const policy = policies.find((candidate) => candidate.id === key.policy_id);
    const rerender = (nextSecret) => renderKey(id, current, nextSecret);

    const details = el('dl', { class: 'details' }, [
      ['ID', el('code', {}, key.id)],
      ['Hint', el('code', {}, key.hint)],
      ['State', [stateBadge(key.state), ' ', expiryNote(key), leakBadge(key)]],
      ['Environment', key.environment],
      ['Owner', key.owner_id || DASH],
      ['Policy', key.policy_id ? el('a', { href: '#/policies' }, policy ? policy.name : key.policy_id) : DASH],
      ['Scopes', chips(key.scopes)],
      ['Expires', time(key.expires_at)],
      key.grace_expires_at ? ['Old secret valid until', time(key.grace_expires_at)] : null,
      key.revoked_reason ? [key.state === 'suspended' ? 'Suspended because' : 'Revoked because', key.revoked_reason] : null,
      leakUrl(key) !== null ? ['Found at', el('code', { 'data-testid': 'leak-url' }, leakUrl(key))] : null,
      ['Last used', time(key.last_used_at)],
      ['Created', time(key.created_at)],
      ['Updated', time(key.updated_at)],
      ['Metadata', Object.keys(key.metadata || {}).length ? el('code', {}, JSON.stringify(key.metadata)) : DASH],
    ].filter(Boolean).map(([term, value]) => [el('dt', {}, term), el('dd', {}, value)]));

    show(
      el('p', {}, el('a', { href: '#/keys' }, '← All keys')),
      el('div', { class: 'page-head' }, el('h1', {}, key.name, stateBadge(key.state))),
      leakUrl(key) !== null ? el('p', { class: 'banner error', role: 'status', 'data-testid': 'leak-notice' },
        `Secret scanning found this key in public, so it was ${key.state}. Give its users a new key.`) : null,
      secret ? secretPanel(secret.raw, secret.id, 'Replacement key created', 'Open the new key’s page →') : null,
      el('div', { class: 'columns' },
        el('section', { class: 'card' }, el('h2', {}, 'Details'), details),
        el('section', { class: 'card' }, el('h2', {}, 'Actions'), keyActions(key, path, rerender))),
      hourlySection(hourly.items, fromHour),
      usageSection(daily.items, from),
      refusalsSection(daily.items),
      monthlySection(monthly.items),
      rotationSection(key, rotations.items),
    );
  }

  function keyActions(key, path, rerender) {
    const buttons = [];
    if (key.state === 'active') {
      buttons.push(el('button', { type: 'button', onclick: () => rotate(key, path, rerender) }, 'Rotate…'));
      buttons.push(el('button', {
        type: 'button', class: 'secondary',
        onclick: () => simpleAction(`Suspend “${key.name}”?`, 'Requests with this key are refused until it is reactivated.', 'Suspend', `${path}/suspend`, rerender),
      }, 'Suspend…'));
    }
    if (key.state === 'suspended') {
      buttons.push(el('button', {
        type: 'button',
        onclick: () => simpleAction(`Reactivate “${key.name}”?`, 'The key validates again from its next request.', 'Reactivate', `${path}/reactivate`, rerender),
      }, 'Reactivate…'));
    }
    if (['active', 'suspended', 'rotated'].includes(key.state)) {
      buttons.push(el('button', { type: 'button', class: 'danger', onclick: () => revoke(key, path, rerender) }, 'Revoke…'));
    }
    if (!buttons.length) {
      return el('p', { class: 'muted' }, `This key is ${key.state}: that is final, nothing more can be done with it.`);
    }
    return [
      el('p', { class: 'muted' }, 'Each action asks for confirmation first.'),
      el('div', { class: 'actions' }, buttons),
    ];
  }

  /** A modal asking to confirm; resolves to the form's values or null. */
  function confirmDialog({ title, message, confirm, danger, fields = [] }) {
    return new Promise((resolve) => {
      const form = el('form', { method: 'dialog' },
        el('h2', {}, title),
        el('p', {}, message),
        fields,
        el('div', { class: 'actions' },
          el('button', { type: 'submit', class: danger ? 'danger' : null, 'data-confirm': '' }, confirm),
          el('button', { type: 'button', class: 'secondary', onclick: () => dialog.close() }, 'Cancel')));
      const dialog = el('dialog', { class: 'modal' }, form);
      let answer = null;
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        answer = form.elements;
        dialog.close();
      });
      dialog.addEventListener('close', () => {
        dialog.remove();
        resolve(answer);
      });
      document.body.append(dialog);
      dialog.showModal();
    });
  }

  async function simpleAction(title, message, confirm, path, rerender) {
    if (!(await confirmDialog({ title, message, confirm }))) return;
    if (await attempt(() => api('POST', path))) await rerender();
  }

  async function revoke(key, path, rerender) {
    const values = await confirmDialog({
      title: `Revoke “${key.name}”?`,
      message: 'Revoking is permanent: the key stops working at once and cannot be restored.',
      confirm: 'Revoke',
      danger: true,
      fields: [field('Reason', el('input', { name: 'reason', placeholder: 'leaked in a public repository', maxlength: 1024 }), 'Recorded with the key.')],
    });
    if (!values) return;
    const reason = values.reason.value.trim();
    if (await attempt(() => api('POST', `${path}/revoke`, reason ? { reason } : {}))) await rerender();
  }

  async function rotate(key, path, rerender) {
    const values = await confirmDialog({
      title: `Rotate “${key.name}”?`,
      message: 'A new key replaces this one, with the same name, scopes and policy. The old secret keeps working for the grace period.',
      confirm: 'Rotate',
      fields: [
        field('Reason', el('select', { name: 'reason' }, REASONS.map((reason) => el('option', { value: reason }, reason)))),
        field('Grace period (seconds)', el('input', { name: 'grace', inputmode: 'numeric', placeholder: 'default' }),
          'Empty: the policy’s rotation grace, else 24 h (0 for reason compromised). 0 stops the old secret at once.'),
      ],
    });
    if (!values) return;
    const body = { reason: values.reason.value };
    const grace = values.grace.value.trim();
    if (grace) body.grace_seconds = /^\d+$/.test(grace) ? Number(grace) : grace;
    const rotated = await attempt(() => api('POST', `${path}/rotate`, body));
    if (rotated) await rerender({ raw: rotated.raw_key, id: rotated.key.id });
  }

  function utcMidnight(ms) {
    return Math.floor(ms / DAY_MS) * DAY_MS;
  }

  function utcHour(ms) {
    return Math.floor(ms / HOUR_MS) * HOUR_MS;
  }

  /** Refused requests of a roll-up, every reason summed. */
  function refusedTotal(item) {
    return item ? Object.values(item.refused || {}).reduce((sum, n) => sum + n, 0) : 0;
  }

  /** `count` points `step` apart from `start`, each with its roll-up's counts (0 where none). */
  function series(items, start, count, step, bucket) {
    const byStart = new Map(items.map((item) => [bucket(new Date(item.period_start).getTime()), item]));
    return Array.from({ length: count }, (_, index) => {
      const at = start + index * step;
      const item = byStart.get(at);
      return { at, requests: item ? item.requests : 0, errors: item ? item.errors : 0, refused: refusedTotal(item) };
    });
  }

  function legend() {
    return el('span', { class: 'legend' },
      el('span', { class: 'swatch requests' }), 'passed',
      el('span', { class: 'swatch errors' }), 'errors (status ≥ 400)',
      el('span', { class: 'swatch refused' }), 'refused');
  }

  function summary(points, unit) {
    const sum = (name) => points.reduce((total, point) => total + point[name], 0);
    return el('p', { class: 'muted' },
      `${number(sum('requests'))} passed, ${number(sum('errors'))} errors, ${number(sum('refused'))} refused (${unit}).`);
  }

  function hourlySection(items, fromIso) {
    const hours = series(items, new Date(fromIso).getTime(), CHART_HOURS, HOUR_MS, utcHour);
    return el('section', { class: 'card' },
      el('div', { class: 'section-head' }, el('h2', {}, `Requests, last ${CHART_HOURS} hours`), legend()),
      summary(hours, 'UTC hours'),
      usageChart(hours, {
        testid: 'usage-chart-hourly',
        label: 'Hourly passed, failed and refused requests over the last',
        unit: 'hours',
        key: (at) => new Date(at).toISOString().slice(0, 13) + ':00',
        tick: (at) => `${new Date(at).toISOString().slice(11, 13)}:00`,
        every: 3,
      }));
  }

  function usageSection(items, fromIso) {
    const days = series(items, new Date(fromIso).getTime(), CHART_DAYS, DAY_MS, utcMidnight);
    return el('section', { class: 'card' },
      el('div', { class: 'section-head' }, el('h2', {}, `Requests, last ${CHART_DAYS} days`), legend()),
      summary(days, 'UTC days'),
      usageChart(days, {
        testid: 'usage-chart',
        label: 'Daily passed, failed and refused requests over the last',
        unit: 'days',
        key: (at) => new Date(at).toISOString().slice(0, 10),
        tick: (at) => dayLabel(new Date(at)),
        every: 5,
      }));
  }

  /** Refused requests of the last days, by reason (the refusal's error code). */
  function refusalsSection(items) {
    const totals = new Map();
    for (const item of items) {
      for (const [reason, count] of Object.entries(item.refused || {})) {
        if (count) totals.set(reason, (totals.get(reason) || 0) + count);
      }
    }
    const rows = [...totals.entries()].sort((a, b) => b[1] - a[1]).map(([reason, count]) => el('tr', {},
      el('td', {}, el('code', {}, reason)), el('td', { class: 'num' }, number(count))));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 2, class: 'empty' }, 'No refused requests.')));
    return el('section', { class: 'card' }, el('h2', {}, `Refused, last ${CHART_DAYS} days, by reason`),
      el('table', { 'data-testid': 'refusals' },
        el('thead', {}, el('tr', {}, el('th', {}, 'Reason'), el('th', { class: 'num' }, 'Requests'))),
        el('tbody', {}, rows)));
  }

  /** Passed requests, errors and refusals as an SVG line chart, one point per period. */
  function usageChart(points, { testid, label, unit, key, tick, every }) {
    const width = 1100;
    const height = 280;
    const pad = { left: 52, right: 16, top: 14, bottom: 30 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const top = niceCeiling(Math.max(1, ...points.map((point) => Math.max(point.requests, point.refused))));
    const x = (index) => pad.left + (plotW * index) / (points.length - 1);
    const y = (value) => pad.top + plotH - (plotH * value) / top;
    const chart = svg('svg', {
      'data-testid': testid, class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img',
      'aria-label': `${label} ${points.length} ${unit}`,
    });
    for (let step = 0; step <= 4; step += 1) {
      const value = (top * step) / 4;
      chart.append(
        svg('line', { class: 'gridline', x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value) }),
        svg('text', { class: 'axis', x: pad.left - 8, y: y(value) + 4, 'text-anchor': 'end' }, compact(value)));
    }
    points.forEach((point, index) => {
      if (index % every === 0 || index === points.length - 1) {
        chart.append(svg('text', { class: 'axis', x: x(index), y: height - 8, 'text-anchor': 'middle' }, tick(point.at)));
      }
    });
    const names = ['requests', 'errors', 'refused'];
    for (const name of names) {
      chart.append(svg('polyline', {
        class: `line ${name}`,
        points: points.map((point, index) => `${x(index).toFixed(1)},${y(point[name]).toFixed(1)}`).join(' '),
      }));
    }
    for (const name of names) {
      points.forEach((point, index) => {
        const at = key(point.at);
        chart.append(svg('circle', {
          class: `point ${name}`, cx: x(index).toFixed(1), cy: y(point[name]).toFixed(1), r: point[name] ? 3.5 : 2,
          'data-day': at, 'data-value': point[name],
        }, svg('title', {}, `${at}: ${number(point.requests)} passed, ${number(point.errors)} errors, ${number(point.refused)} refused`)));
      });
    }
    return chart;
  }

  function niceCeiling(value) {
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (value <= step * magnitude) return Math.max(4, step * magnitude);
    }
    return 10 * magnitude;
  }

  function compact(value) {
    if (value >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
    if (value >= 1e3) return `${+(value / 1e3).toFixed(1)}k`;
    return String(+value.toFixed(1));
  }

  function monthlySection(items) {
    const rows = items.slice().reverse().map((item) => el('tr', {},
      el('td', {}, monthLabel(item.period_start)),
      el('td', { class: 'num' }, number(item.requests)),
      el('td', { class: 'num' }, number(item.errors)),
      el('td', { class: 'num' }, item.requests ? `${((100 * item.errors) / item.requests).toFixed(1)} %` : DASH)));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 4, class: 'empty' }, 'No requests recorded yet.')));
    return el('section', { class: 'card' }, el('h2', {}, 'Monthly totals'),
      el('table', { 'data-testid': 'monthly-usage' },
        el('thead', {}, el('tr', {}, el('th', {}, 'Month'), el('th', { class: 'num' }, 'Requests'),
          el('th', { class: 'num' }, 'Errors'), el('th', { class: 'num' }, 'Error rate'))),
        el('tbody', {}, rows)));
  }

  function rotationSection(key, items) {
    const rows = items.slice().reverse().map((rotation) => el('tr', {},
      el('td', {}, time(rotation.created_at)),
      el('td', {}, rotation.reason),
      el('td', {}, rotation.key_id === key.id ? 'this key' : keyLink(rotation.key_id)),
      el('td', {}, rotation.new_key_id === key.id ? 'this key' : keyLink(rotation.new_key_id)),
      el('td', {}, duration(rotation.grace_seconds)),
      el('td', {}, time(rotation.grace_expires_at))));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'This key has not been rotated.')));
    return el('section', { class: 'card' }, el('h2', {}, 'Rotation history'),
      el('table', { 'data-testid': 'rotations' },
        el('thead', {}, el('tr', {}, ['When', 'Reason', 'Old key', 'New key', 'Grace', 'Old secret valid until']
          .map((title) => el('th', {}, title)))),
        el('tbody', {}, rows)));
  }

  /** A button that deletes `path` after a confirmation, then redraws the page. */
  function deleteButton(title, message, path) {
    return el('button', {
      type: 'button', class: 'danger small',
      onclick: async () => {
        if (!(await confirmDialog({ title, message, confirm: 'Delete', danger: true }))) return;
        // A 204 answers null; a failure, undefined.
        if ((await attempt(() => api('DELETE', path))) !== undefined) route();
      },
    }, 'Delete');
  }

  // ---- policies --------------------------------------------------------------

  async function renderPolicies(current) {
    const loaded = await load(current, el('h1', {}, 'Policies'), [api('GET', 'policies?limit=1000')]);
    if (!loaded) return;
    const policies = loaded[0].items;
    const formSlot = el('div');
    const openForm = (policy) => {
      formSlot.replaceChildren(policyForm(policy, () => formSlot.replaceChildren(), () => route()));
      formSlot.querySelector('input').focus();
    };
    const rows = policies.map((policy) => el('tr', { 'data-policy-id': policy.id },
      el('td', {}, el('strong', {}, policy.name)),
      el('td', {}, policy.rate_limits.length
        ? policy.rate_limits.map((l) => `${l.name}: ${number(l.requests)} / ${duration(l.window)}${l.burst ? `, burst ${number(l.burst)}` : ''}`).join('; ')
        : DASH),
      el('td', {}, quotaText(policy.quota)),
      el('td', {}, chips(policy.allowed_ips, 'any')),
      el('td', {}, chips(policy.allowed_origins, 'any')),
      el('td', {}, chips(policy.allowed_scopes, 'any')),
      el('td', {}, duration(policy.max_key_age)),
      el('td', {}, duration(policy.rotation_grace)),
      el('td', { class: 'row-actions' },
        el('button', { type: 'button', class: 'secondary small', onclick: () => openForm(policy) }, 'Edit'),
        deleteButton(`Delete policy “${policy.name}”?`, 'A policy that a live key uses cannot be deleted.',
          `policies/${encodeURIComponent(policy.id)}`))));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 9, class: 'empty' }, 'No policies yet.')));
    show(
      el('div', { class: 'page-head' }, el('h1', {}, 'Policies'),
        el('button', { type: 'button', onclick: () => openForm(null) }, 'New policy')),
      formSlot,
      el('div', { class: 'card flush' }, el('table', { 'data-testid': 'policies-table' },
        el('thead', {}, el('tr', {}, ['Name', 'Rate limit', 'Quota', 'IPs', 'Origins', 'Scopes', 'Max key age', 'Rotation grace', '']
          .map((title) => el('th', {}, title)))),
        el('tbody', {}, rows))),
    );
  }

  function quotaText(quota) {
    if (!quota || (!quota.daily && !quota.monthly)) return DASH;
    return [quota.daily ? `${number(quota.daily)} / day` : null, quota.monthly ? `${number(quota.monthly)} / month` : null]
      .filter(Boolean).join(' · ');
  }

  /** An integer when the text is one, else the text (for the API to refuse). */
  function integer(text) {
    const trimmed = text.trim();
    if (!trimmed) return undefined;
    return /^\d+$/.test(trimmed) ? Number(trimmed) : trimmed;
  }

  function policyForm(policy, close, saved) {
    const p = policy || {};
    const input = (name, value, attrs = {}) => el('input', { name, value: value ?? '', ...attrs });
    const area = (name, items, placeholder) => {
      const node = el('textarea', { name, rows: 2, placeholder });
      node.value = (items || []).join('\n');
      return node;
    };
    const form = el('form', {
      class: 'card', 'data-testid': 'policy-form',
      onsubmit: async (event) => {
        event.preventDefault();
        const v = form.elements;
        const body = {
          name: v.name.value.trim(),
          allowed_ips: splitList(v.allowed_ips.value),
          allowed_origins: splitList(v.allowed_origins.value),
          allowed_scopes: splitList(v.allowed_scopes.value),
          metadata: p.metadata || {},
          // The form edits the first limit; the others are kept as they are.
          rate_limits: (p.rate_limits || []).slice(1),
          limit_by: p.limit_by || 'key',
        };
        const requests = integer(v.requests.value);
        const window = integer(v.window.value);
        const burst = integer(v.burst.value);
        if (requests !== undefined || window !== undefined || burst !== undefined) {
          const name = p.rate_limits?.[0]?.name || 'default';
          body.rate_limits.unshift({ name, requests, window, burst });
        }
        const daily = integer(v.daily.value);
        const monthly = integer(v.monthly.value);
        if (daily !== undefined || monthly !== undefined) body.quota = { daily, monthly };
        const maxAge = integer(v.max_key_age.value);
        if (maxAge !== undefined) body.max_key_age = maxAge;
        const grace = integer(v.rotation_grace.value);
        if (grace !== undefined) body.rotation_grace = grace;
        const done = await attempt(() => (policy
          ? api('PUT', `policies/${encodeURIComponent(policy.id)}`, body)
          : api('POST', 'policies', body)));
        if (done) saved();
      },
    },
    el('h2', {}, policy ? `Edit policy “${policy.name}”` : 'New policy'),
    el('p', { class: 'muted' }, 'Empty fields limit nothing. Saving replaces every setting of the policy.'),
    el('div', { class: 'grid' },
      field('Name', input('name', p.name, { required: true, maxlength: 128, placeholder: 'partners' })),
      field('Requests per window', input('requests', p.rate_limits?.[0]?.requests, { inputmode: 'numeric', placeholder: '100' })),
      field('Window (seconds)', input('window', p.rate_limits?.[0]?.window, { inputmode: 'numeric', placeholder: '60' })),
      field('Burst', input('burst', p.rate_limits?.[0]?.burst, { inputmode: 'numeric', placeholder: 'same as requests' })),
      field('Daily quota', input('daily', p.quota?.daily, { inputmode: 'numeric', placeholder: 'requests per UTC day' })),
      field('Monthly quota', input('monthly', p.quota?.monthly, { inputmode: 'numeric', placeholder: 'requests per month' })),
      field('Max key age (seconds)', input('max_key_age', p.max_key_age, { inputmode: 'numeric', placeholder: '7776000 = 90 d' })),
      field('Rotation grace (seconds)', input('rotation_grace', p.rotation_grace, { inputmode: 'numeric', placeholder: '86400 = 24 h' })),
      field('Allowed IPs', area('allowed_ips', p.allowed_ips, '10.0.0.0/8'), 'Networks or addresses, one per line. Empty: any.'),
      field('Allowed origins', area('allowed_origins', p.allowed_origins, 'https://app.example.com'), 'Exact Origin values. Empty: any.'),
      field('Allowed scopes', area('allowed_scopes', p.allowed_scopes, 'read'), 'Scopes keys may hold. Empty: any.')),
    el('div', { class: 'actions' },
      el('button', { type: 'submit' }, policy ? 'Save policy' : 'Create policy'),
      el('button', { type: 'button', class: 'secondary', onclick: close }, 'Cancel')));
    return form;
  }

  // ---- scopes ----------------------------------------------------------------

  async function renderScopes(current) {
    const loaded = await load(current, el('h1', {}, 'Scopes'), [api('GET', 'scopes')]);
    if (!loaded) return;
    const scopes = loaded[0].items;
    const form = el('form', {
      class: 'card inline-form', 'data-testid': 'create-scope',
      onsubmit: async (event) => {
        event.preventDefault();
        const body = { name: form.elements.name.value.trim(), description: form.elements.description.value.trim() };
        if (await attempt(() => api('POST', 'scopes', body))) route();
      },
    },
    field('Name', el('input', { name: 'name', required: true, maxlength: 128, placeholder: 'read:users' })),
    field('Description', el('input', { name: 'description', maxlength: 1024, placeholder: 'Read user profiles' })),
    el('button', { type: 'submit' }, 'Add scope'));
    const rows = scopes.map((scope) => el('tr', { 'data-scope-id': scope.id },
      el('td', {}, el('code', {}, scope.name)),
      el('td', {}, scope.description || DASH),
      el('td', {}, time(scope.created_at)),
      el('td', { class: 'row-actions' },
        deleteButton(`Delete scope “${scope.name}”?`, 'It leaves the registry; keys keep the scopes they hold.',
          `scopes/${encodeURIComponent(scope.id)}`))));
    if (!rows.length) rows.push(el('tr', {}, el('td', { colspan: 4, class: 'empty' }, 'No scopes registered.')));
    show(
      el('div', { class: 'page-head' }, el('h1', {}, 'Scopes')),
      el('p', { class: 'muted' }, 'The tenant’s scope registry. A granted scope also grants every scope below it: ',
        el('code', {}, 'read'), ' grants ', el('code', {}, 'read:users'), '.'),
      form,
      el('div', { class: 'card flush' }, el('table', { 'data-testid': 'scopes-table' },
        el('thead', {}, el('tr', {}, ['Name', 'Description', 'Created', ''].map((title) => el('th', {}, title)))),
        el('tbody', {}, rows))),
    );
  }

  route();
})();
