// The Keysmith dashboard in real Chromium, against a real `keysmith serve`.
// scripts/ui-tests starts the server and passes, through the environment:
//   KEYSMITH_UI_URL       the dashboard (http://127.0.0.1:PORT/keysmith/ui/)
//   KEYSMITH_ADMIN_KEY    an admin key made by `keysmith bootstrap-admin`
//   KEYSMITH_SEEDED       the JSON that seed_usage printed for the key with usage
//   KEYSMITH_XSS_NAME     the name of a key whose name is HTML
//   KEYSMITH_READ_KEY     a key without keysmith:admin
//   KEYSMITH_SCREENSHOTS  where to write keys-page.png and usage-chart.png
//   KEYSMITH_GITHUB_KEYS_PORT  the port `keysmith serve --github-keys-url` fetches
//                         GitHub's secret scanning keys from (this file serves them)
import { test, before, after } from 'node:test';
import { createServer } from 'node:http';
import { generateKeyPairSync, sign } from 'node:crypto';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests through scripts/ui-tests`);
  return value;
};
const UI = need('KEYSMITH_UI_URL');
const ADMIN_KEY = need('KEYSMITH_ADMIN_KEY');
const SEEDED = JSON.parse(readFileSync(need('KEYSMITH_SEEDED'), 'utf8'));
const XSS_NAME = need('KEYSMITH_XSS_NAME');
const SCREENSHOTS = need('KEYSMITH_SCREENSHOTS');
const READ_KEY = need('KEYSMITH_READ_KEY');
const GITHUB_KEYS_PORT = Number(need('KEYSMITH_GITHUB_KEYS_PORT'));
const RAW_KEY = /^[a-z0-9]{1,16}_(live|test|dev)_[0-9A-Za-z]{38}$/;

let profile;
let context;
let page;
const consoleErrors = [];

before(async () => {
  profile = mkdtempSync(join(tmpdir(), 'keysmith-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1280, height: 800 },
    deviceScaleFactor: 1,
  });
  page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(10000);
  page.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => consoleErrors.push(String(error)));
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

const storage = () => page.evaluate(() => ({
  session: Object.fromEntries(Object.entries(sessionStorage)),
  local: localStorage.length,
  cookies: document.cookie,
  url: location.href,
}));

async function signIn(key) {
  await page.fill('input[name="admin-key"]', key);
  await page.click('form.signin button[type="submit"]');
}

async function openKey(name) {
  await page.goto(`${UI}#/keys`);
  await page.locator('[data-testid="keys-table"] a', { hasText: name }).first().click();
  await page.locator('h1', { hasText: name }).waitFor();
}

test('a key the API refuses stays on the sign-in page with the API message', async () => {
  await page.goto(UI);
  await signIn('sk_live_000000000000000000000000000000000000000');
  const alert = page.locator('form.signin [role="alert"]');
  await alert.waitFor();
  assert.match(await alert.textContent(), /key/i);
  assert.equal(await page.locator('[data-testid="keys-table"]').count(), 0);
  assert.deepEqual((await storage()).session, {});
});

test('signing in keeps the admin key in sessionStorage only and shows the keys', async () => {
  await signIn(ADMIN_KEY);
  await page.locator('[data-testid="keys-table"]').waitFor();
  const state = await storage();
  assert.deepEqual(Object.values(state.session), [ADMIN_KEY]);
  assert.equal(state.local, 0);
  assert.equal(state.cookies, '');
  assert.ok(!state.url.includes(ADMIN_KEY), state.url);
  const names = await page.locator('[data-testid="keys-table"] tbody tr td:first-child').allTextContents();
  assert.ok(names.includes('bootstrap admin'), names.join(', '));
  assert.ok(names.includes('storefront'), names.join(', '));
});

test('a key name made of HTML is shown as text', async () => {
  const cell = page.locator('[data-testid="keys-table"] tbody td:first-child', { hasText: XSS_NAME });
  assert.equal(await cell.textContent(), XSS_NAME);
  assert.equal(await page.locator('[data-testid="keys-table"] img').count(), 0);
});

test('keys expiring within a week are marked', async () => {
  const row = page.locator('[data-testid="keys-table"] tbody tr', { hasText: 'billing (expiring)' });
  assert.match(await row.locator('[data-expiring-soon]').textContent(), /expires in \d d/);
  assert.equal(await page.locator('[data-testid="keys-table"] tbody tr', { hasText: 'storefront' }).locator('[data-expiring-soon]').count(), 0);
});

test('filtering by state asks the API for that state only', async () => {
  await page.selectOption('select[name="state"]', 'suspended');
  await page.waitForURL(/state=suspended/);
  const states = () => page.locator('[data-testid="keys-table"] tbody [data-state]').evaluateAll((nodes) => nodes.map((n) => n.dataset.state));
  // The table is replaced once the API answers.
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="keys-table"] tbody tr').length === 1);
  assert.deepEqual(await states(), ['suspended']);
  assert.match(await page.locator('[data-testid="keys-table"] tbody').textContent(), /legacy partner/);
  await page.selectOption('select[name="state"]', '');
  await page.waitForURL((url) => !url.hash.includes('state='));
  await page.locator('[data-testid="keys-table"] tbody tr', { hasText: 'storefront' }).waitFor();
  await page.screenshot({ path: join(SCREENSHOTS, 'keys-page.png'), fullPage: true });
});

test('an API refusal is shown as the API message', async () => {
  await page.click('button:has-text("New key")');
  const form = page.locator('[data-testid="create-key"]');
  await form.locator('input[name="name"]').fill('bad scopes');
  await form.locator('input[name="scopes"]').fill('read::users');
  await form.locator('button[type="submit"]').click();
  const banner = page.locator('#error');
  await banner.waitFor();
  assert.match(await banner.textContent(), /scope/i);
  assert.equal(await page.locator('[data-testid="raw-key"]').count(), 0);
  await form.locator('button', { hasText: 'Cancel' }).click();
});

let createdRaw;

test('a created key shows its raw key exactly once', async () => {
  await page.click('button:has-text("New key")');
  const form = page.locator('[data-testid="create-key"]');
  await form.locator('input[name="name"]').fill('ui-test key');
  await form.locator('input[name="scopes"]').fill('read:orders');
  await form.locator('select[name="environment"]').selectOption('test');
  await form.locator('button[type="submit"]').click();
  const raw = page.locator('[data-testid="raw-key"]');
  await raw.waitFor();
  createdRaw = (await raw.textContent()).trim();
  assert.match(createdRaw, RAW_KEY);
  assert.ok(createdRaw.startsWith('sk_test_'), createdRaw);
  assert.equal(await raw.count(), 1);
  assert.match(await page.locator('[data-testid="raw-key-panel"]').textContent(), /you will not see it again/);
  // The table below already lists it, by hint only.
  const row = page.locator('[data-testid="keys-table"] tbody tr', { hasText: 'ui-test key' });
  await row.waitFor();
  assert.ok(!(await row.textContent()).includes(createdRaw));

  await page.click('#nav a[data-nav="policies"]');
  await page.locator('[data-testid="policies-table"]').waitFor();
  await page.click('#nav a[data-nav="keys"]');
  await page.locator('[data-testid="keys-table"]').waitFor();
  assert.equal(await page.locator('[data-testid="raw-key"]').count(), 0);
  assert.ok(!(await page.content()).includes(createdRaw), 'the raw key is gone from the page');
  const state = await storage();
  assert.ok(!JSON.stringify(state).includes(createdRaw), 'the raw key is stored nowhere');
});

test('revoking a key, after confirming, changes its state', async () => {
  await openKey('ui-test key');
  await page.click('button:has-text("Revoke…")');
  const dialog = page.locator('dialog.modal');
  await dialog.locator('input[name="reason"]').fill('ui test');
  await dialog.locator('button[data-confirm]').click();
  await page.locator('.page-head [data-state="revoked"]').waitFor();
  assert.match(await page.locator('.details').textContent(), /Revoked because\s*ui test/);
  await page.click('a:has-text("← All keys")');
  const row = page.locator('[data-testid="keys-table"] tbody tr', { hasText: 'ui-test key' });
  assert.equal(await row.locator('[data-state]').textContent(), 'revoked');
});

test('cancelling a confirmation changes nothing', async () => {
  await openKey('storefront');
  await page.click('button:has-text("Suspend…")');
  await page.locator('dialog.modal button', { hasText: 'Cancel' }).click();
  await page.locator('dialog.modal').waitFor({ state: 'detached' });
  assert.equal(await page.locator('.page-head [data-state]').textContent(), 'active');
});

test('the usage chart draws one point per day from the aggregates', async () => {
  const chart = page.locator('[data-testid="usage-chart"]');
  await chart.waitFor();
  const points = (series) => chart.locator(`circle.point.${series}`).evaluateAll(
    (nodes) => nodes.map((node) => ({ day: node.dataset.day, value: Number(node.dataset.value) })));
  const requests = await points('requests');
  const errors = await points('errors');
  assert.equal(requests.length, 30);
  assert.equal(errors.length, 30);
  assert.equal(await chart.locator('polyline').count(), 3, 'passed, errors and refused');
  const seeded = Object.entries(SEEDED.days);
  const drawn = Object.fromEntries(requests.filter((p) => p.value > 0).map((p) => [p.day, p.value]));
  assert.deepEqual(drawn, Object.fromEntries(seeded.map(([day, v]) => [day, v.requests])));
  const drawnErrors = Object.fromEntries(errors.filter((p) => p.value > 0).map((p) => [p.day, p.value]));
  assert.deepEqual(drawnErrors, Object.fromEntries(seeded.filter(([, v]) => v.errors > 0).map(([day, v]) => [day, v.errors])));

  // Monthly totals add up to what was seeded.
  const monthly = await page.locator('[data-testid="monthly-usage"] tbody tr td:nth-child(2)').allTextContents();
  const total = monthly.reduce((sum, text) => sum + Number(text.replace(/,/g, '')), 0);
  assert.equal(total, seeded.reduce((sum, [, v]) => sum + v.requests, 0));
  const refused = await points('refused');
  const drawnRefused = Object.fromEntries(refused.filter((p) => p.value > 0).map((p) => [p.day, p.value]));
  const sumReasons = (v) => Object.values(v.refused).reduce((sum, n) => sum + n, 0);
  assert.deepEqual(drawnRefused,
    Object.fromEntries(seeded.filter(([, v]) => sumReasons(v) > 0).map(([day, v]) => [day, sumReasons(v)])));
  await chart.locator('xpath=..').screenshot({ path: join(SCREENSHOTS, 'usage-chart.png') });
});

test('the last 24 hours are drawn hour by hour, passed and refused', async () => {
  const chart = page.locator('[data-testid="usage-chart-hourly"]');
  await chart.waitFor();
  const points = (series) => chart.locator(`circle.point.${series}`).evaluateAll(
    (nodes) => nodes.map((node) => ({ hour: node.dataset.day, value: Number(node.dataset.value) })));
  const requests = await points('requests');
  assert.equal(requests.length, 24);
  const drawn = (list) => Object.fromEntries(list.filter((p) => p.value > 0).map((p) => [p.hour, p.value]));
  const seeded = Object.entries(SEEDED.hours);
  assert.deepEqual(drawn(requests), Object.fromEntries(seeded.filter(([, v]) => v.requests > 0).map(([h, v]) => [h, v.requests])));
  assert.deepEqual(drawn(await points('refused')),
    Object.fromEntries(seeded.filter(([, v]) => v.refused > 0).map(([h, v]) => [h, v.refused])));
});

test('refusals of the last 30 days are listed by reason', async () => {
  const table = page.locator('[data-testid="refusals"]');
  await table.waitFor();
  const rows = await table.locator('tbody tr').evaluateAll((trs) => trs.map((tr) =>
    [tr.cells[0].textContent, Number(tr.cells[1].textContent.replace(/,/g, ''))]));
  const expected = {};
  for (const v of Object.values(SEEDED.days)) {
    for (const [reason, n] of Object.entries(v.refused)) if (n) expected[reason] = (expected[reason] || 0) + n;
  }
  assert.deepEqual(Object.fromEntries(rows), expected);
});

test('rotating shows the replacement key once and records the rotation', async () => {
  await openKey('legacy partner');
  await page.click('button:has-text("Reactivate…")');
  await page.locator('dialog.modal button[data-confirm]').click();
  await page.locator('.page-head [data-state="active"]').waitFor();
  await page.click('button:has-text("Rotate…")');
  const dialog = page.locator('dialog.modal');
  await dialog.locator('select[name="reason"]').selectOption('scheduled');
  await dialog.locator('input[name="grace"]').fill('3600');
  await dialog.locator('button[data-confirm]').click();
  const raw = page.locator('[data-testid="raw-key"]');
  await raw.waitFor();
  assert.match((await raw.textContent()).trim(), RAW_KEY);
  await page.locator('.page-head [data-state="rotated"]').waitFor();
  const history = await page.locator('[data-testid="rotations"] tbody tr').allTextContents();
  assert.equal(history.length, 1);
  assert.match(history[0], /scheduled.*this key.*1 h/);
});

test('policies can be created and edited', async () => {
  await page.click('#nav a[data-nav="policies"]');
  await page.click('button:has-text("New policy")');
  let form = page.locator('[data-testid="policy-form"]');
  await form.locator('input[name="name"]').fill('ui-partners');
  await form.locator('input[name="requests"]').fill('100');
  await form.locator('input[name="window"]').fill('60');
  await form.locator('input[name="daily"]').fill('5000');
  await form.locator('textarea[name="allowed_ips"]').fill('10.0.0.0/8\n192.0.2.7');
  await form.locator('textarea[name="allowed_origins"]').fill('https://app.example.com');
  await form.locator('textarea[name="allowed_scopes"]').fill('read');
  await form.locator('input[name="max_key_age"]').fill('7776000');
  await form.locator('button[type="submit"]').click();
  let row = page.locator('[data-testid="policies-table"] tbody tr', { hasText: 'ui-partners' });
  await row.waitFor();
  assert.match(await row.textContent(), /100 \/ 1 min.*5,000 \/ day.*10\.0\.0\.0\/8.*192\.0\.2\.7\/32.*https:\/\/app\.example\.com.*read.*90 d/);

  await row.locator('button', { hasText: 'Edit' }).click();
  form = page.locator('[data-testid="policy-form"]');
  assert.equal(await form.locator('input[name="requests"]').inputValue(), '100');
  await form.locator('input[name="requests"]').fill('250');
  await form.locator('input[name="window"]').fill('not-a-number');
  await form.locator('button[type="submit"]').click();
  await page.locator('#error').waitFor();
  assert.match(await page.locator('#error').textContent(), /window/);
  await form.locator('input[name="window"]').fill('1');
  await form.locator('button[type="submit"]').click();
  row = page.locator('[data-testid="policies-table"] tbody tr', { hasText: 'ui-partners' });
  await row.filter({ hasText: '250 / 1 s' }).waitFor();
  assert.match(await row.textContent(), /192\.0\.2\.7\/32/);
});

test('scopes can be registered and deleted', async () => {
  await page.click('#nav a[data-nav="scopes"]');
  const form = page.locator('[data-testid="create-scope"]');
  await form.locator('input[name="name"]').fill('write:ui-tests');
  await form.locator('input[name="description"]').fill('Made by the browser tests');
  await form.locator('button[type="submit"]').click();
  const row = page.locator('[data-testid="scopes-table"] tbody tr', { hasText: 'write:ui-tests' });
  await row.waitFor();
  await row.locator('button', { hasText: 'Delete' }).click();
  await page.locator('dialog.modal button[data-confirm]').click();
  await row.waitFor({ state: 'detached' });
});

test('the keys list comes in pages of 20', async () => {
  // 20 more keys, made through the API with the signed-in admin key.
  await page.evaluate(async () => {
    const key = Object.values(sessionStorage)[0];
    for (let n = 1; n <= 20; n += 1) {
      const response = await fetch('../v1/keys', {
        method: 'POST',
        headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ name: `batch ${String(n).padStart(2, '0')}` }),
      });
      if (response.status !== 201) throw new Error(`create answered ${response.status}`);
    }
  });
  await page.goto(`${UI}#/keys`);
  const rows = page.locator('[data-testid="keys-table"] tbody tr');
  await page.locator('.pager', { hasText: 'Keys 1–20' }).waitFor();
  assert.equal(await rows.count(), 20);
  assert.equal(await page.locator('.pager a[rel="prev"]').count(), 0, 'no previous page on the first');
  await page.click('.pager a[rel="next"]');
  await page.locator('.pager', { hasText: 'Keys 21–' }).waitFor();
  const names = await page.locator('[data-testid="keys-table"] tbody td:first-child').allTextContents();
  assert.ok(names.includes('batch 20'), names.join(', '));
  assert.ok(!names.includes('bootstrap admin'), names.join(', '));
  await page.click('.pager a[rel="prev"]');
  await page.locator('.pager', { hasText: 'Keys 1–20' }).waitFor();
});

/** Plays GitHub: serves a fresh P-256 public key and posts `alerts` signed with it. */
async function githubAlert(alerts) {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const document = JSON.stringify({ public_keys: [{
    key_identifier: 'ui-test-key', key: publicKey.export({ type: 'spki', format: 'pem' }), is_current: true,
  }] });
  const server = createServer((_, response) => response.writeHead(200, { 'content-type': 'application/json' }).end(document));
  await new Promise((resolve) => server.listen(GITHUB_KEYS_PORT, '127.0.0.1', resolve));
  try {
    const body = JSON.stringify(alerts);
    const response = await fetch(new URL('../v1/secret-scanning/github', UI), {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'github-public-key-identifier': 'ui-test-key',
        'github-public-key-signature': sign('sha256', Buffer.from(body), privateKey).toString('base64'),
      },
      body,
    });
    return { status: response.status, feedback: await response.json() };
  } finally {
    server.close();
  }
}

test('a key GitHub reports leaked shows as leaked, with the URL as text and never as a link', async () => {
  const created = await fetch(new URL('../v1/keys', UI), {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'leaked deploy key' }),
  }).then((response) => response.json());
  // An attacker-chosen scheme and markup: both must stay inert text.
  const url = 'javascript:alert(document.domain)//<img src=x onerror=alert(1)>';
  const { status, feedback } = await githubAlert([{ token: created.raw_key, type: 'keysmith_api_key', url, source: 'content' }]);
  assert.equal(status, 200);
  assert.equal(feedback[0].label, 'true_positive');
  assert.ok(!JSON.stringify(feedback).includes(created.raw_key), 'the token is never echoed');

  // Many keys exist by now: list the revoked ones, where it is.
  await page.goto(`${UI}#/keys?state=revoked`);
  const row = page.locator('[data-testid="keys-table"] tbody tr', { hasText: 'leaked deploy key' });
  await row.locator('[data-leaked]').waitFor();
  assert.equal(await row.locator('[data-state]').textContent(), 'revoked');
  await row.locator('a', { hasText: 'leaked deploy key' }).click();
  await page.locator('h1', { hasText: 'leaked deploy key' }).waitFor();
  assert.equal(await page.locator('[data-testid="leak-url"]').textContent(), url);
  assert.match(await page.locator('[data-testid="leak-notice"]').textContent(), /found this key in public/);
  assert.match(await page.locator('dl.details').textContent(), /Revoked becauseleaked: javascript:/);
  assert.equal(await page.locator('a[href^="javascript:"], main img').count(), 0);
  await page.screenshot({ path: join(SCREENSHOTS, 'leaked-key.png') });
});

test('signing out empties sessionStorage and returns to sign-in', async () => {
  await page.click('#sign-out');
  await page.locator('input[name="admin-key"]').waitFor();
  const state = await page.evaluate(() => sessionStorage.length);
  assert.equal(state, 0);
  await page.reload();
  await page.locator('input[name="admin-key"]').waitFor();
  assert.equal(await page.locator('[data-testid="keys-table"]').count(), 0);
});

test('a key that loses access sends the page back to sign-in', async () => {
  // A non-admin key: the API answers 403, and the page signs out with its message.
  await signIn(READ_KEY);
  const alert = page.locator('form.signin [role="alert"]');
  await alert.waitFor();
  assert.match(await alert.textContent(), /keysmith:admin|scope/);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
});

test('the page raised no errors, Content-Security-Policy violations included', () => {
  // Chromium logs every 4xx answer of the API (the refusals tested above); nothing else is expected.
  const unexpected = consoleErrors.filter((text) => !/^Failed to load resource: the server responded with a status of 4\d\d/.test(text));
  assert.deepEqual(unexpected, []);
});
