// Browser checks of the admin console, run by tests/tests/browser_ui.rs against a real control
// plane, Postgres, NATS, a data plane and the mock upstream (their URLs come in SB_* variables).
// Playwright drives Debian's Chromium headless; oauth2-mock-server is the OIDC provider.
//
// Checks, in order (each failure names itself and exits 1):
//  1. password sign-in; session cookie HttpOnly + SameSite=Strict; wrong password refused
//  2. keyboard: the first Tab lands on "Skip to content"
//  3. create tenants, a provider (pointing at the mock upstream; its credential never shown),
//     a deployment and a key (secret shown once, with a copy button); each write says it was
//     applied on all data planes; a bad id is refused next to its field
//  4. the key works through the data plane; the request shows in spend (and its CSV) and in
//     the request log with its attempt; the deployment's health page and its test button
//  5. revoke the key; the data plane refuses it
//  6. writes without the CSRF token are refused
//  7. a tenant admin sees only its tenant (lists, filters, direct writes on another tenant's key)
//  8. a viewer sees no write controls and the server refuses its writes
//  9. OIDC sign-in (code + PKCE) as platform admin and as tenant admin; unmapped role refused
//     prices: override set/cleared, sync errors; a key's limits/expiry/models edited, rotated
// 10. screenshots of the main pages (1280x800 and narrow); page sizes and requests per page
import { chromium } from "playwright-core";
import { OAuth2Server } from "oauth2-mock-server";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing ${name}`);
  return v;
};
const UI = env("SB_UI"), DP = env("SB_DATAPLANE"), MOCK = env("SB_MOCK");
const OIDC_PORT = Number(env("SB_OIDC_PORT"));
const SHOTS = env("SB_SCREENSHOTS");
mkdirSync(SHOTS, { recursive: true });
const started = Date.now();
let passed = 0;

function check(name, ok, detail = "") {
  if (!ok) {
    console.error(`FAIL: ${name}${detail ? ` — ${detail}` : ""}`);
    throw new Error(`check failed: ${name}`);
  }
  passed++;
  console.log(`ok   ${name}`);
}

async function until(name, fn, ms = 20000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  check(name, false, `gave up after ${ms} ms (${last})`);
}

// ---- the OIDC provider ----
const oidc = new OAuth2Server();
await oidc.issuer.keys.generate("RS256");
oidc.issuer.url = `http://127.0.0.1:${OIDC_PORT}`;
let ssoClaims = {};
oidc.service.on("beforeTokenSigning", (token) => Object.assign(token.payload, ssoClaims));
await oidc.start(OIDC_PORT, "127.0.0.1");

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

const pageSizes = [];
async function context(viewport = { width: 1280, height: 800 }) {
  return browser.newContext({ viewport });
}

async function signIn(ctx, email, password) {
  const page = await ctx.newPage();
  await page.goto(`${UI}/ui`);
  await page.fill("#f-email", email);
  await page.fill("#f-password", password);
  await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
  return page;
}

async function submit(page, action, values) {
  const form = page.locator(`form[action="${action}"]`);
  for (const [name, value] of Object.entries(values)) {
    const field = form.locator(`[name="${name}"]`);
    if ((await field.evaluate((e) => e.tagName)) === "SELECT") await field.selectOption(value);
    else await field.fill(value);
  }
  const [response] = await Promise.all([page.waitForNavigation(), form.locator("button[type=submit]").click()]);
  return response;
}

const csrfOf = (page) => page.locator('form[action="/ui/logout"] input[name=csrf]').inputValue();

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: false });
}

/** Loads `path` and records its size and the requests the load made. */
async function measure(page, path) {
  const requests = [];
  const listener = (r) => requests.push(r.url());
  page.on("request", listener);
  const response = await page.goto(`${UI}${path}`, { waitUntil: "load" });
  page.off("request", listener);
  const body = await response.body();
  const gz = (await import("node:zlib")).gzipSync(body).length;
  pageSizes.push({ path, bytes: body.length, gzip: gz, requests: requests.length });
  return response;
}

async function chat(secret) {
  const r = await fetch(`${DP}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "m-chat", messages: [{ role: "user", content: "hello from the browser test" }] }),
  });
  return r.status;
}

try {
  // 1. password sign-in
  const rootCtx = await context();
  const bad = await rootCtx.newPage();
  await bad.goto(`${UI}/ui`);
  check("an anonymous browser is sent to the sign-in page", bad.url().endsWith("/ui/login"), bad.url());
  await shot(bad, "login");
  // 2. keyboard
  await bad.keyboard.press("Tab");
  const firstFocus = await bad.evaluate(() => document.activeElement?.id || document.activeElement?.name);
  check("keyboard: Tab reaches the email field first", firstFocus === "f-email", firstFocus);
  await bad.fill("#f-email", env("SB_ADMIN"));
  await bad.fill("#f-password", "wrong password");
  await Promise.all([bad.waitForNavigation(), bad.click("button[type=submit]")]);
  check("a wrong password is refused in words", (await bad.textContent("body")).toLowerCase().includes("wrong email or password"));
  await bad.close();

  const root = await signIn(rootCtx, env("SB_ADMIN"), env("SB_PASSWORD"));
  check("password sign-in lands on the overview", (await root.textContent("h1")) === "Overview", root.url());
  const cookie = (await rootCtx.cookies()).find((c) => c.name === "sb_session");
  check("the session cookie is HttpOnly and SameSite=Strict", cookie?.httpOnly && cookie?.sameSite === "Strict", JSON.stringify(cookie));
  await root.keyboard.press("Tab");
  check("keyboard: the first Tab on a page is the skip link",
    (await root.evaluate(() => document.activeElement?.textContent)) === "Skip to content");

  // the data plane is live before writes, so that they can be applied on it
  await until("the data plane shows in the fleet", async () => {
    await root.goto(`${UI}/ui/fleet`);
    return (await root.locator("td .ok").count()) > 0;
  });

  // 3. create objects
  await root.goto(`${UI}/ui/tenants`);
  let r = await submit(root, "/ui/tenants", { id: "bad id!", name: "x" });
  check("a bad tenant id is refused with 422", r.status() === 422, r.status());
  check("the error is shown next to the id field", (await root.locator("#f-id-err").textContent()).includes("must be 1-64"));
  for (const id of ["acme", "globex"]) {
    r = await submit(root, "/ui/tenants", { id, name: `${id} corp` });
    check(`tenant ${id} created`, r.status() === 200 && (await root.textContent("body")).includes(`Tenant ${id} created`));
  }
  check("the write says it was applied on all data planes",
    (await root.textContent("[role=status]")).includes("applied on all 1 data plane"), await root.textContent("[role=status]"));

  await root.goto(`${UI}/ui/providers`);
  const upstreamSecret = "sk-upstream-browser-secret-42";
  r = await submit(root, "/ui/providers", { id: "p-mock", kind: "openai", base_url: MOCK, api_key: upstreamSecret });
  check("provider created", r.status() === 200 && (await root.textContent("body")).includes("Provider p-mock created"));
  check("the provider credential is never shown", !(await root.content()).includes(upstreamSecret));
  check("the credential input is a password field", (await root.getAttribute("#f-api_key", "type")) === "password");

  await root.goto(`${UI}/ui/deployments`);
  r = await submit(root, "/ui/deployments", { id: "d-mock", model: "m-chat", provider: "p-nope", upstream_model: "gpt-4o" });
  check("a deployment on an unknown provider is refused next to the provider field",
    r.status() === 422 && (await root.locator("#f-provider-err").textContent()).includes("unknown provider"));
  r = await submit(root, "/ui/deployments", { id: "d-mock", model: "m-chat", provider: "p-mock", upstream_model: "gpt-4o" });
  check("deployment created", r.status() === 200 && (await root.textContent("body")).includes("Deployment d-mock created"));

  await root.goto(`${UI}/ui/keys`);
  r = await submit(root, "/ui/keys", { tenant_id: "acme", name: "browser key", "budget.max_usd": "5", "limits.rpm": "600" });
  check("key created", r.status() === 200);
  const secret = (await root.textContent("#new-secret")).trim();
  check("the key's secret is shown once, with a copy button", secret.startsWith("sk-") && (await root.locator("button[data-copy=new-secret]").count()) === 1, secret.slice(0, 6));
  const keyId = (await root.textContent("[role=status] strong")).match(/key (\S+) now/)[1];
  await shot(root, "keys-created");
  await root.goto(`${UI}/ui/keys`);
  check("the secret is not shown again", !(await root.content()).includes(secret));

  // 4. use the key through the data plane; see it in spend
  await until("the data plane serves the new key", async () => (await chat(secret)) === 200);
  await until("the request shows in spend by key", async () => {
    await root.goto(`${UI}/ui/spend?group_by=key`);
    return (await root.textContent("body")).includes(keyId);
  });
  await shot(root, "spend");
  // the same request in the request log, with its attempt timeline
  await until("the request shows in the request log", async () => {
    await root.goto(`${UI}/ui/requests?key_id=${keyId}`);
    return (await root.textContent("#requests tbody")).includes("m-chat");
  });
  check("the request log row names the key and the deployment",
    (await root.textContent("#requests tbody")).includes(keyId) && (await root.textContent("#requests tbody")).includes("d-mock"));
  await Promise.all([root.waitForNavigation(), root.click("#requests tbody a")]);
  check("a request's page shows its attempt on the deployment",
    (await root.textContent("#attempts tbody")).includes("d-mock") && (await root.textContent("#request")).includes("success"));
  await shot(root, "requests");
  // the deployment's health page; its test button sends one test call to the upstream
  await Promise.all([root.goto(`${UI}/ui/deployments`)]);
  await Promise.all([root.waitForNavigation(), root.click('#deployments a[href="/ui/deployments/d-mock/health"]')]);
  check("a deployment's health page shows it", (await root.textContent("#deployment-health")).includes("d-mock"));
  await Promise.all([root.waitForNavigation(), root.click("#test")]);
  check("the test button reports the upstream's answer", (await root.textContent("#test-result")).includes("Test passed"),
    await root.textContent("#test-result"));
  await shot(root, "deployment-health");
  r = await root.goto(`${UI}/ui/requests?status=lots`);
  check("a bad status filter is refused in words", r.status() === 422 && (await root.textContent("body")).includes("status"), r.status());
  const csv = await root.request.get(`${UI}/ui/spend?group_by=key&format=csv`);
  check("the spend CSV export holds the key", csv.headers()["content-type"].startsWith("text/csv") && (await csv.text()).includes(keyId));
  await root.goto(`${UI}/ui`);
  check("the overview counts today's request", Number(await root.textContent("#requests-today")) >= 1);
  await shot(root, "overview");
  for (const [path, name] of [["/ui/tenants", "tenants"], ["/ui/providers", "providers"], ["/ui/deployments", "deployments"],
    ["/ui/budgets", "budgets"], ["/ui/prices", "prices"], ["/ui/fleet", "fleet"], ["/ui/audit", "audit"], ["/ui/models", "models"]]) {
    const resp = await measure(root, path);
    check(`${path} loads`, resp.status() === 200, resp.status());
    await shot(root, name);
  }
  await root.goto(`${UI}/ui/budgets`);
  check("the budget page shows the key's budget with a bar and its reset time",
    (await root.locator("meter").count()) >= 1 && (await root.textContent("tbody")).includes(keyId) && (await root.textContent("tbody")).includes("UTC"));

  // a model policy
  await root.goto(`${UI}/ui/models`);
  r = await submit(root, "/ui/models", { model: "m-chat", strategy: "round_robin", fallbacks: "m-nowhere", retries: "1" });
  check("a policy naming an unknown fallback is refused in words", r.status() === 422, r.status());
  r = await submit(root, "/ui/models", { model: "m-chat", strategy: "round_robin", retries: "1" });
  check("a model policy is saved", r.status() === 200 && (await root.textContent("#policies")).includes("round_robin"));

  // a tenant's page: suspend-able, budget
  await root.goto(`${UI}/ui/tenants/globex`);
  r = await submit(root, "/ui/tenants/globex", { "budget.max_usd": "250", "budget.period": "monthly", "limits.rpm": "1000" });
  check("a tenant's budget and limits are saved", r.status() === 200 && (await root.textContent("body")).includes("Tenant globex saved"));

  // prices: override set and cleared, sync errors in words
  await root.goto(`${UI}/ui/prices?search=gpt-4o`);
  check("the prices page lists the synced file's models with their version", (await root.textContent("#prices")).includes("gpt-4o"));
  r = await submit(root, "/ui/prices/override", { model: "m-house-model", input_cost_per_token: "abc" });
  check("a price that is not a number is refused next to its field", r.status() === 422 &&
    (await root.locator("#f-input_cost_per_token-err").textContent()).includes("must be a number"));
  r = await submit(root, "/ui/prices/override", { model: "m-house-model", input_cost_per_token: "1.5", output_cost_per_token: "6" });
  check("a price override is set", r.status() === 200 && (await root.textContent("body")).includes("Price override of m-house-model set"));
  await root.goto(`${UI}/ui/prices?search=m-house-model`);
  check("the override shows with its $/Mtok", (await root.textContent("#prices")).includes("override") && (await root.textContent("#prices")).includes("1.5000"));
  await Promise.all([root.waitForNavigation(), root.click('form[action="/ui/prices/clear"] button')]);
  check("the override is cleared", (await root.textContent("body")).includes("Price override of m-house-model cleared"));
  r = await submit(root, "/ui/prices/sync", { url: "" });
  check("a sync without a URL is refused next to the URL field", r.status() === 422 &&
    (await root.locator("#f-url-err").textContent()).includes("no prices.url is configured"));

  // key edit and rotate
  await root.goto(`${UI}/ui/keys/${keyId}`);
  r = await submit(root, `/ui/keys/${keyId}`, { "budget.max_usd": "lots" });
  check("a bad budget is refused next to its field", r.status() === 422 && (await root.locator("#f-budget-max_usd-err").textContent()).includes("must be a number"));
  const badRpm = await root.request.post(`${UI}/ui/keys/${keyId}`, { form: { csrf: await csrfOf(root), "limits.rpm": "-5" } });
  check("the server checks limits too (a hand-made form)", badRpm.status() === 422, badRpm.status());
  r = await submit(root, `/ui/keys/${keyId}`, { "limits.rpm": "120", expires_at: "2099-01-31", allowed_models: "m-chat" });
  check("a key's limits, expiry and models are saved", r.status() === 200 && (await root.textContent("body")).includes(`Key ${keyId} saved`)
    && (await root.inputValue("#f-limits-rpm")) === "120" && (await root.inputValue("#f-expires_at")) === "2099-01-31");
  r = await submit(root, `/ui/keys/${keyId}`, { "cache.ttl_seconds": "60" });
  check("a key's own response cache is saved", r.status() === 200 && (await root.inputValue("#f-cache-ttl_seconds")) === "60"
    && (await root.inputValue("#f-limits-rpm")) === "120");
  r = await submit(root, `/ui/keys/${keyId}`, { "cache.ttl_seconds": "0" });
  check("0 turns the response cache off for the key", r.status() === 200 && (await root.inputValue("#f-cache-ttl_seconds")) === "0");
  r = await submit(root, `/ui/keys/${keyId}`, { "cache.ttl_seconds": "99999999" });
  check("a too long cache TTL is refused next to its field", r.status() === 422
    && (await root.locator("#f-cache-ttl_seconds-err").textContent()).includes("between 1 and"));
  r = await submit(root, `/ui/keys/${keyId}`, { "cache.ttl_seconds": "" });
  check("an empty cache TTL leaves it to the models' policies", r.status() === 200 && (await root.inputValue("#f-cache-ttl_seconds")) === "");
  await Promise.all([root.waitForNavigation(), root.click(`form[action="/ui/keys/${keyId}/rotate"] button`)]);
  const rotated = (await root.textContent("#new-secret")).trim();
  check("rotating shows the new secret once", rotated.startsWith("sk-") && rotated !== secret);
  await until("the old secret is refused after rotation", async () => (await chat(secret)) === 401);
  await until("the rotated secret works", async () => (await chat(rotated)) === 200);

  // 5. revoke
  await root.goto(`${UI}/ui/keys`);
  await Promise.all([root.waitForNavigation(), root.click(`tr[data-key="${keyId}"] button.danger`)]);
  check("the key is revoked and the page says so", (await root.textContent("body")).includes(`Key ${keyId} revoked`));
  await until("the data plane refuses the revoked key", async () => (await chat(rotated)) === 401);

  // 6. CSRF
  const noToken = await root.request.post(`${UI}/ui/tenants`, { form: { id: "csrf-less" } });
  check("a write without the CSRF token is refused (403)", noToken.status() === 403, noToken.status());
  const wrongToken = await root.request.post(`${UI}/ui/tenants`, { form: { id: "csrf-wrong", csrf: "00" } });
  check("a write with a wrong CSRF token is refused (403)", wrongToken.status() === 403);

  // admins of other roles, made through the admin API
  const login = await (await fetch(`${UI}/admin/v1/auth/login`, { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: env("SB_ADMIN"), password: env("SB_PASSWORD") }) })).json();
  for (const a of [{ email: "globex-admin@example.com", role: "tenant_admin", tenant_id: "globex" }, { email: "viewer@example.com", role: "viewer" }]) {
    const made = await fetch(`${UI}/admin/v1/admins`, { method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${login.access_token}` },
      body: JSON.stringify({ ...a, password: "a long enough password" }) });
    check(`admin ${a.email} created through the API`, made.status === 201, made.status);
  }
  // a key of globex, for the tenant admin to see
  await root.goto(`${UI}/ui/keys`);
  await submit(root, "/ui/keys", { tenant_id: "globex", name: "globex key" });
  const globexKey = (await root.textContent("[role=status] strong")).match(/key (\S+) now/)[1];

  // 7. tenant admin
  const taCtx = await context();
  const ta = await signIn(taCtx, "globex-admin@example.com", "a long enough password");
  await ta.goto(`${UI}/ui/keys`);
  let body = await ta.textContent("body");
  check("a tenant admin sees its tenant's keys", body.includes(globexKey));
  check("a tenant admin does not see another tenant's keys", !body.includes(keyId));
  await ta.goto(`${UI}/ui/keys?tenant_id=acme`);
  check("a tenant admin cannot list another tenant's keys by filter", !(await ta.textContent("body")).includes(keyId));
  await ta.goto(`${UI}/ui/requests?tenant_id=acme`);
  check("a tenant admin does not see another tenant's requests", !(await ta.textContent("body")).includes(keyId));
  await ta.goto(`${UI}/ui/tenants`);
  body = await ta.textContent("#tenants");
  check("a tenant admin sees only its tenant", body.includes("globex") && !body.includes("acme"));
  check("a tenant admin has no Providers link", (await ta.locator('nav a[href="/ui/providers"]').count()) === 0);
  const health = await ta.goto(`${UI}/ui/deployments/health`);
  check("a tenant admin is refused deployment health (403)", health.status() === 403, health.status());
  const prov = await ta.goto(`${UI}/ui/providers`);
  check("a tenant admin is refused the providers page (403)", prov.status() === 403, prov.status());
  const taCsrf = await csrfOf(ta);
  const reach = await ta.request.post(`${UI}/ui/keys/${keyId}/revoke`, { form: { csrf: taCsrf } });
  check("a tenant admin cannot revoke another tenant's key (404)", reach.status() === 404, reach.status());
  const steal = await ta.request.post(`${UI}/ui/keys`, { form: { csrf: taCsrf, tenant_id: "acme", name: "x" } });
  check("a tenant admin cannot create a key in another tenant", steal.status() >= 400, steal.status());
  await ta.goto(`${UI}/ui/audit`);
  check("a tenant admin's audit log holds no other tenant's entries", !(await ta.textContent("tbody")).includes("acme"));
  await shot(ta, "tenant-admin-keys");

  // 8. viewer
  const vCtx = await context();
  const viewer = await signIn(vCtx, "viewer@example.com", "a long enough password");
  await viewer.goto(`${UI}/ui/keys`);
  check("a viewer sees keys", (await viewer.textContent("body")).includes(globexKey));
  check("a viewer sees no create form and no revoke buttons",
    (await viewer.locator('form[action="/ui/keys"]').count()) === 0 && (await viewer.locator("button.danger").count()) === 0);
  const vCsrf = await csrfOf(viewer);
  const vWrite = await viewer.request.post(`${UI}/ui/keys`, { form: { csrf: vCsrf, tenant_id: "globex", name: "viewer key" } });
  check("the server refuses a viewer's write (403)", vWrite.status() === 403, vWrite.status());
  const vRevoke = await viewer.request.post(`${UI}/ui/keys/${globexKey}/revoke`, { form: { csrf: vCsrf } });
  check("the server refuses a viewer's revoke (403)", vRevoke.status() === 403, vRevoke.status());
  await viewer.goto(`${UI}/ui/deployments/d-mock/health`);
  check("a viewer reads deployment health without the test button",
    (await viewer.textContent("#deployment-health")).includes("d-mock") && (await viewer.locator("#test").count()) === 0);
  const vTest = await viewer.request.post(`${UI}/ui/deployments/d-mock/test`, { form: { csrf: vCsrf } });
  check("the server refuses a viewer's test call (403)", vTest.status() === 403, vTest.status());

  // logout
  await Promise.all([viewer.waitForNavigation(), viewer.click('form[action="/ui/logout"] button')]);
  await viewer.goto(`${UI}/ui/keys`);
  check("after sign-out the console asks to sign in again", viewer.url().endsWith("/ui/login"));

  // 9. SSO
  ssoClaims = { email: "sso-admin@example.com", groups: ["staff", "gw-admins"] };
  const ssoCtx = await context();
  const sso = await ssoCtx.newPage();
  await sso.goto(`${UI}/ui/login`);
  await sso.click("#sso");
  await sso.waitForURL(`${UI}/ui`);
  check("SSO sign-in as a platform admin", (await sso.textContent("header .who")).includes("sso-admin@example.com · platform_admin"));
  await sso.goto(`${UI}/ui/providers`);
  check("an SSO platform admin reaches platform pages", (await sso.textContent("body")).includes("p-mock"));
  ssoClaims = { email: "sso-globex@example.com", groups: ["gw-tenant-admins"], tenant: "globex" };
  const ssoTaCtx = await context();
  const ssoTa = await ssoTaCtx.newPage();
  await ssoTa.goto(`${UI}/ui/login`);
  await ssoTa.click("#sso");
  await ssoTa.waitForURL(`${UI}/ui`);
  check("SSO maps claims to tenant admin of globex", (await ssoTa.textContent("header .who")).includes("tenant_admin of globex"));
  await ssoTa.goto(`${UI}/ui/keys`);
  body = await ssoTa.textContent("body");
  check("an SSO tenant admin sees only its tenant's keys", body.includes(globexKey) && !body.includes(keyId));
  const stray = await (await context()).newPage();
  const noFlow = await stray.goto(`${UI}/ui/sso/callback?code=x&state=y`);
  check("an SSO callback without a started sign-in is refused", noFlow.status() === 401 &&
    (await stray.textContent("body")).includes("no sign-in was started"));
  // start a sign-in without following it to the provider (the flow cookie lands in the context)
  const begun = await stray.request.get(`${UI}/ui/sso/start`, { maxRedirects: 0 });
  check("SSO start redirects to the provider with PKCE S256 and a nonce", begun.status() === 303 &&
    /code_challenge_method=S256/.test(begun.headers().location) && /nonce=/.test(begun.headers().location), begun.headers().location);
  const forged = await stray.goto(`${UI}/ui/sso/callback?code=x&state=forged`);
  check("an SSO callback with another state is refused", forged.status() === 401 &&
    (await stray.textContent("body")).includes("state does not match"));
  ssoClaims = { email: "nobody@example.com", groups: ["contractors"] };
  const ssoBadCtx = await context();
  const ssoBad = await ssoBadCtx.newPage();
  await ssoBad.goto(`${UI}/ui/login`);
  await ssoBad.click("#sso");
  await ssoBad.waitForLoadState();
  check("an SSO user whose claims map to no role is refused", (await ssoBad.textContent("body")).includes("maps to no role"));

  // 10. narrow screen, sizes
  const narrowCtx = await context({ width: 390, height: 844 });
  const narrow = await signIn(narrowCtx, env("SB_ADMIN"), env("SB_PASSWORD"));
  await narrow.goto(`${UI}/ui/keys`);
  const overflow = await narrow.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check("narrow screen: the page itself does not scroll sideways (tables scroll in their box)", overflow <= 1, overflow);
  await shot(narrow, "keys-narrow");
  for (const path of ["/ui", "/ui/keys", "/ui/spend"]) await measure(root, path);
  for (const p of pageSizes) {
    check(`${p.path}: under 200 KB (${p.bytes} B, ${p.gzip} B gzipped) in ${p.requests} requests (page, css, js)`,
      p.bytes < 200 * 1024 && p.requests <= 3);
  }
  console.log(`browser checks: ${passed} passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} catch (e) {
  console.error(e);
  process.exitCode = 1;
} finally {
  await browser.close();
  await oidc.stop();
}
