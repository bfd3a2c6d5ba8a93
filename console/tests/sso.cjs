// Single sign-on end to end in headless Chromium (playwright-core) against a real OpenID
// Provider (oidc-provider, cli/tests/idp/idp.mjs). Run by cli/tests/sso.rs with BASE, IDP, AXE
// and ARTIFACTS set.
//
// People sign in at the IdP and land in the console with the role their groups map to; someone
// in no mapped group, a tampered ID token and a wrong nonce are refused; a rotated signing key
// is picked up; a change without the CSRF token is refused; signing out ends the session at the
// IdP too; a revoked session's open stream ends; a person whose group is removed at the IdP is
// signed out at the next refresh. Prints `SESSION <name> <cookie>` lines for the Rust side.
"use strict";
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const { BASE, IDP, ARTIFACTS } = process.env;
const AXE = fs.readFileSync(process.env.AXE, "utf8");
const step = (m) => console.log(`[sso ${new Date().toISOString()}] ${m}`);
const errors = [];

async function control(what, body) {
  const r = await fetch(`${IDP}/test/${what}`, { method: "POST", body: JSON.stringify(body) });
  if (r.status !== 204) throw new Error(`idp control ${what}: ${r.status} ${await r.text()}`);
}

async function page(browser, who) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const p = await ctx.newPage();
  p.on("pageerror", (e) => errors.push(`${who}: ${e.message}`));
  p.on("console", (m) => {
    // Expected: 401s once a session ends, 403 for the CSRF probe, the IdP's own pages.
    if (m.type() === "error" && !/status of 40[13]/.test(m.text()) && !p.url().startsWith(IDP)) {
      errors.push(`${who} console: ${m.text()}`);
    }
  });
  return p;
}

async function axe(p, screen) {
  await p.evaluate(AXE);
  const result = await p.evaluate(async () =>
    // eslint-disable-next-line no-undef
    (await axe.run(document, { resultTypes: ["violations"] })).violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length })),
  );
  fs.writeFileSync(path.join(ARTIFACTS, `axe-${screen}.json`), JSON.stringify(result, null, 2));
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) throw new Error(`axe on ${screen}: ${JSON.stringify(bad)}`);
  step(`axe ${screen}: ${result.length} minor or moderate, 0 serious`);
}

/** Signs `login` in at the IdP from the console's button; resolves once back on the console. */
async function ssoSignIn(p, login) {
  await p.goto(`${BASE}/console/`);
  await p.click("#sso-signin");
  await p.waitForURL((u) => u.href.startsWith(IDP));
  await p.fill('input[name="login"]', login);
  await p.fill('input[name="password"]', "anything");
  await p.click('button[type="submit"]');
  await p.waitForURL((u) => u.href.startsWith(`${BASE}/console/`));
}

const me = (p) =>
  p.evaluate(async () => {
    const r = await fetch("/v1/me");
    return { status: r.status, body: r.ok ? await r.json() : null };
  });

async function sessionCookie(p) {
  const cookies = await p.context().cookies();
  const c = cookies.find((k) => k.name === "sb_session");
  if (!c) throw new Error("no sb_session cookie");
  if (!c.httpOnly || c.sameSite !== "Lax") throw new Error(`session cookie flags: ${JSON.stringify(c)}`);
  return c.value;
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
  try {
    await control("groups", { login: "ann", groups: ["support"] });
    await control("groups", { login: "sue", groups: ["support", "support-leads"] });
    await control("groups", { login: "mal", groups: ["marketing"] });

    step("ann signs in at the IdP and lands in the console as an agent");
    const ann = await page(browser, "ann");
    await ann.goto(`${BASE}/console/`);
    await ann.waitForSelector("#sso-signin");
    await axe(ann, "sso-signin");
    await ssoSignIn(ann, "ann");
    await ann.waitForSelector(".workspace");
    await ann.waitForSelector('[data-view="my-open"]');
    await axe(ann, "sso-workspace");
    await ann.screenshot({ path: path.join(ARTIFACTS, "sso-workspace.png") });
    const annMe = await me(ann);
    if (annMe.status !== 200 || annMe.body.role !== "agent" || !annMe.body.session_id || annMe.body.token_id !== null) {
      throw new Error(`ann's /v1/me: ${JSON.stringify(annMe)}`);
    }
    const annCookie = await sessionCookie(ann);

    step("a change without the CSRF token is refused; with it, it is made");
    const csrf = await ann.evaluate(async (agent) => {
      const put = (headers) =>
        fetch(`/v1/agents/${agent}/status`, { method: "PUT", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify({ status: "online" }) });
      const without = await put({});
      const wrong = await put({ "x-csrf-token": "forged" });
      const token = document.cookie.split("; ").find((c) => c.startsWith("sb_csrf=")).slice(8);
      const right = await put({ "x-csrf-token": token });
      return { without: without.status, field: (await without.json()).error.field, wrong: wrong.status, right: right.status };
    }, annMe.body.agent_id);
    if (csrf.without !== 403 || csrf.field !== "x-csrf-token" || csrf.wrong !== 403 || csrf.right !== 200) {
      throw new Error(`csrf: ${JSON.stringify(csrf)}`);
    }

    step("sue's groups make her a supervisor");
    const sue = await page(browser, "sue");
    await ssoSignIn(sue, "sue");
    await sue.waitForSelector(".workspace");
    const sueMe = await me(sue);
    if (sueMe.body?.role !== "supervisor") throw new Error(`sue's /v1/me: ${JSON.stringify(sueMe)}`);
    const sueCookie = await sessionCookie(sue);

    step("ivy is in IT: an admin, who sees the live sessions and the sign-ins in the audit log");
    await control("groups", { login: "ivy", groups: ["it"] });
    const ivy = await page(browser, "ivy");
    await ssoSignIn(ivy, "ivy");
    await ivy.waitForSelector(".workspace");
    await ivy.click('.screens button:has-text("Sessions")');
    await ivy.waitForSelector('.roster tr[data-session="ann"]');
    await ivy.waitForSelector('.roster tr[data-session="ivy"] td:has-text("this session")');
    await ivy.screenshot({ path: path.join(ARTIFACTS, "sso-sessions.png") });
    await axe(ivy, "sso-sessions");
    await ivy.click('.screens button:has-text("Audit log")');
    await ivy.waitForSelector('.audit tr[data-action="session.created"]');
    await ivy.waitForSelector('.audit tr[data-action="identity.linked"]');
    await axe(ivy, "sso-audit");

    step("mal's group maps to no role: refused, with the reason");
    const mal = await page(browser, "mal");
    await ssoSignIn(mal, "mal");
    await mal.waitForSelector('.signin [role="alert"]:has-text("no Switchboard role")');
    await axe(mal, "sso-refused");
    if ((await me(mal)).status !== 401) throw new Error("mal has a session");

    step("a tampered ID token and a wrong nonce are refused");
    for (const mode of ["signature", "nonce"]) {
      await control("tamper", { mode });
      const p = await page(browser, `tamper-${mode}`);
      await ssoSignIn(p, "ann");
      await p.waitForSelector('.signin [role="alert"]:has-text("could not be verified")');
      if ((await me(p)).status !== 401) throw new Error(`a ${mode}-tampered token made a session`);
      await p.context().close();
    }

    step("sue leaves the leads group at the IdP: at the next refresh she is an agent");
    await control("groups", { login: "sue", groups: ["support"] });
    await sue.waitForTimeout(2500);
    const demoted = await me(sue);
    if (demoted.status !== 200 || demoted.body.role !== "agent") throw new Error(`sue after the IdP change: ${JSON.stringify(demoted)}`);
    await control("groups", { login: "sue", groups: ["support", "support-leads"] });

    step("an admin signs sue's session out: her open stream ends");
    await sue.evaluate((agent) => {
      window.__es = new EventSource(`/v1/agents/${agent}/stream`);
      window.__opened = new Promise((resolve) => window.__es.addEventListener("snapshot", () => resolve(true)));
    }, sueMe.body.agent_id);
    await sue.evaluate(() => window.__opened);
    // Ivy signs it out from the sessions screen: a DELETE made with her session and its CSRF token.
    await ivy.click('.screens button:has-text("Sessions")');
    await ivy.click('.roster tr[data-session="sue"] button:has-text("Sign out")');
    await ivy.waitForSelector('.sent:has-text("Signed out the session of sue")');
    // Closed before the IdP's test harness rotates its key (its new provider would refuse the
    // old one's refresh tokens, which a real rotation does not).
    await ivy.context().close();
    await sue.waitForFunction(() => window.__es.readyState === 2, null, { timeout: 20000 });
    if ((await me(sue)).status !== 401) throw new Error("the revoked session still works");

    step("ann's group is removed at the IdP: the next refresh signs her out");
    await control("groups", { login: "ann", groups: [] });
    await ann.waitForTimeout(2500);
    await ann.click('[data-view="my-open"]');
    await ann.waitForSelector('.signin [role="alert"]:has-text("signed out")', { timeout: 20000 });
    if ((await me(ann)).status !== 401) throw new Error("ann still has access");

    // Last: the IdP's test harness rotates by starting a new provider, whose refresh grants
    // differ from the old one's.
    step("the IdP rotates its signing key: the next sign-in fetches the new one");
    await control("rotate", {});
    const sue2 = await page(browser, "sue-after-rotation");
    await ssoSignIn(sue2, "sue");
    await sue2.waitForSelector(".workspace");

    step("sue signs out of the second session: at the IdP too, and that session is gone");
    await sue2.click('button:has-text("Sign out")');
    await sue2.waitForURL((u) => u.href.startsWith(IDP));
    // The IdP asks whether to sign out there as well.
    await sue2.click('button[autofocus], button[type="submit"]');
    await sue2.waitForURL((u) => u.href.startsWith(`${BASE}/console/`));
    await sue2.waitForSelector("#sso-signin");
    if ((await me(sue2)).status !== 401) throw new Error("the signed-out session still works");

    console.log(`SESSION ann ${annCookie}`);
    console.log(`SESSION sue ${sueCookie}`);
    if (errors.length) throw new Error(`page errors:\n${errors.join("\n")}`);
    step("done");
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
