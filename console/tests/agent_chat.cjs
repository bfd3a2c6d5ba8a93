// Browser test (headless Chromium through playwright-core): an agent signs in to the console
// (`/console/`) and goes online; a customer starts a chat; the assignment reaches the console live; the agent
// replies; the customer's chat shows the reply. A hostile message renders as text. Screenshots
// go to $ARTIFACTS. Run by cli/tests/browser.rs with BASE, TOKEN, ARTIFACTS set.
"use strict";
const { chromium } = require("playwright-core");
const AXE = require("fs").readFileSync(process.env.AXE, "utf8");

/** axe-core's serious or critical violations on `p` (evaluated through DevTools: the CSP stays strict). */
async function audit(p) {
  await p.evaluate(AXE);
  const found = await p.evaluate(async () =>
    // eslint-disable-next-line no-undef
    (await axe.run(document, { resultTypes: ["violations"] })).violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help })),
  );
  return found.filter((v) => v.impact === "serious" || v.impact === "critical");
}

const { BASE, TOKEN, SUP_TOKEN, ARTIFACTS } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

function step(msg) { console.log(`[browser ${new Date().toISOString()}] ${msg}`); }

(async () => {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const errors = [];
  try {
    const agentCtx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const agent = await agentCtx.newPage();
    agent.on("pageerror", (e) => errors.push("agent page: " + e.message));
    step("agent signs in to the console and goes online");
    await agent.goto(`${BASE}/console/`);
    await agent.fill("#token", TOKEN);
    await agent.click("#signin button[type=submit]");
    await agent.waitForSelector(".workspace");
    await agent.waitForFunction(() => document.getElementById("my-status")?.value === "offline");
    await agent.selectOption("#my-status", "online");
    await agent.waitForFunction(() => document.getElementById("my-status").value === "online");

    const customerCtx = await browser.newContext({ viewport: { width: 600, height: 800 } });
    const customer = await customerCtx.newPage();
    customer.on("pageerror", (e) => errors.push("customer page: " + e.message));
    step("customer starts a chat");
    await customer.goto(`${BASE}/chat`);
    await customer.fill("#email", "rosa@example.com");
    await customer.click("#start button[type=submit]");
    await customer.waitForSelector("#room:not([hidden])");
    await customer.waitForFunction(() => document.getElementById("conn").textContent === "connected");
    await customer.fill("#text", "Hello, my parcel has not arrived and the tracking has not moved.");
    await customer.click("#send button[type=submit]");
    await customer.waitForSelector("text=sent");

    step("the assignment arrives live in the console");
    await agent.click('[data-view="my-open"]');
    await agent.waitForFunction(() => document.querySelector('[data-view="my-open"] .count')?.textContent === "1", null, { timeout: 60000 });
    const item = agent.locator(".tickets li[data-ticket]").first();
    await item.waitFor({ timeout: 30000 });
    await item.click();
    await agent.waitForSelector(".msg.inbound >> text=my parcel has not arrived");
    step("the console says the chat is unverified (the widget's email is only a claim)");
    await agent.waitForSelector(".side .claim >> text=claims rosa@example.com");
    await agent.waitForSelector(".side .claim .badge >> text=unverified");
    if (await agent.locator(".side .orders li").count() !== 0) throw new Error("an unverified chat shows the orders of the address it claims");

    step("a hostile message renders as text");
    const hostile = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>';
    await customer.fill("#text", hostile);
    await customer.click("#send button[type=submit]");
    await agent.waitForFunction((h) => [...document.querySelectorAll(".messages .msg .text")].some((m) => m.textContent.includes(h)), hostile, { timeout: 60000 });
    if (await agent.evaluate(() => window.__pwned === 1)) throw new Error("a customer's message ran as script");

    step("the agent replies");
    await agent.fill("#reply-text", "Sorry about that! A replacement ships today.");
    await agent.click(".reply button[type=submit]");
    await agent.waitForSelector(".msg.outbound >> text=A replacement ships today.");

    step("the agent searches the knowledge base and inserts an answer");
    await agent.fill("#kb-q", "cancel order");
    await agent.press("#kb-q", "Enter");
    const article = agent.locator(".kb-results li", { hasText: "Cancelling an order" }).first();
    await article.waitFor({ timeout: 10000 });
    await article.locator("button").click();
    // Each title once, however many variants of the answer the knowledge base holds.
    const titles = await agent.locator(".kb-results li").allTextContents();
    const cancel = titles.filter((t) => t.startsWith("Cancelling an order")).length;
    if (cancel !== 1) throw new Error(`"Cancelling an order" listed ${cancel} times: ${JSON.stringify(titles)}`);
    await agent.waitForFunction(() => document.getElementById("reply-text").value.length > 20);
    // Inserted as the customer reads it: the shop's facts, no template left.
    const inserted = await agent.inputValue("#reply-text");
    if (inserted.includes("{{")) throw new Error("template placeholders inserted: " + inserted);
    await agent.fill("#reply-text", "");

    step("the customer sees the reply");
    await customer.waitForSelector(".msg.outbound >> text=A replacement ships today.", { timeout: 30000 });

    step("the agent resolves; the survey reaches the chat; the customer rates");
    await agent.click('header button:has-text("Resolve")');
    const survey = customer.locator(".msg.outbound", { hasText: "/csat/" });
    await survey.waitFor({ timeout: 30000 });
    const link = (await survey.textContent()).match(/https?:\/\/\S+\/csat\/[0-9a-f]{64}/)[0];
    const rate = await customerCtx.newPage();
    rate.on("pageerror", (e) => errors.push("survey page: " + e.message));
    await rate.goto(link);
    await rate.click('#r button[data-r="4"]');
    await rate.waitForSelector("text=Thank you!");
    await rate.screenshot({ path: `${ARTIFACTS}/survey.png` });

    step("the customer tracks her order");
    const track = await customerCtx.newPage();
    track.on("pageerror", (e) => errors.push("tracking page: " + e.message));
    await track.goto(`${BASE}/track`);
    await track.fill("#number", "1001");
    await track.fill("#email", "rosa@example.com");
    await track.click("#track button[type=submit]");
    await track.waitForSelector(".shipment >> text=DHL");
    await track.screenshot({ path: `${ARTIFACTS}/tracking.png` });

    step("the customer starts a return of one line");
    const ret = await customerCtx.newPage();
    ret.on("pageerror", (e) => errors.push("returns page: " + e.message));
    await ret.goto(`${BASE}/returns`);
    await ret.fill("#number", "#1001");
    await ret.fill("#email", "rosa@example.com");
    await ret.click("#find button[type=submit]");
    await ret.waitForSelector("#start:not([hidden])");
    await ret.fill("#qty-0", "1");
    await ret.selectOption("#reason", "did_not_fit");
    await ret.fill("#note", "Zu groß — ein Nummer kleiner bitte");
    await ret.click("#start button[type=submit]");
    await ret.waitForSelector("#result h2 >> text=/Return RMA-\\d+/");
    await ret.waitForSelector("#result >> text=Your return is approved");
    await ret.screenshot({ path: `${ARTIFACTS}/returns.png`, fullPage: true });
    const retAxe = await audit(ret);
    if (retAxe.length) throw new Error("returns page accessibility: " + JSON.stringify(retAxe));

    step("the customer searches the help centre and reads an answer");
    const help = await customerCtx.newPage();
    help.on("pageerror", (e) => errors.push("help page: " + e.message));
    await help.goto(`${BASE}/help`);
    await help.fill("#q", "how do I cancel my order");
    await help.click("#search button[type=submit]");
    await help.locator("#hits a.hit", { hasText: "Cancelling an order" }).first().click();
    await help.waitForSelector("#article h2 >> text=Cancelling an order");
    const body = await help.textContent("#article");
    if (body.includes("{{")) throw new Error("template placeholders shown to the customer: " + body);
    await help.screenshot({ path: `${ARTIFACTS}/help-centre.png`, fullPage: true });

    step("the supervisor dashboard shows the chat in its charts and drills down to it");
    const supCtx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const sup = await supCtx.newPage();
    sup.on("pageerror", (e) => errors.push("dashboard page: " + e.message));
    await sup.goto(`${BASE}/dashboard`);
    await sup.fill("#token", SUP_TOKEN);
    await sup.click("#signin-form button[type=submit]");
    await sup.waitForSelector("#board:not([hidden])");
    // The sink writes ClickHouse in batches; the page refreshes itself every 5 s.
    const bar = sup.locator('#by-channel rect.bar[data-key="chat"]');
    await bar.waitFor({ timeout: 60000 });
    await bar.click();
    await sup.waitForSelector("#drill-list li >> text=chat");
    await sup.waitForFunction(() => [...document.querySelectorAll("#agents tbody td")].some((td) => td.textContent === "rita@example.com"));
    // The return the customer started: in the week's rate, by its reason, and approved by the policy.
    await sup.waitForSelector("#returns-summary >> text=100% approved by the policy alone");
    await sup.locator("#returns-weekly rect.bar").first().waitFor();
    await sup.locator('#returns-reason rect.bar').first().waitFor();
    const supAxe = await audit(sup);
    if (supAxe.length) throw new Error("dashboard accessibility: " + JSON.stringify(supAxe));
    await sup.screenshot({ path: `${ARTIFACTS}/supervisor-dashboard.png`, fullPage: true });

    await agent.screenshot({ path: `${ARTIFACTS}/agent-console.png`, fullPage: true });
    await customer.screenshot({ path: `${ARTIFACTS}/customer-chat.png`, fullPage: true });
    if (errors.length) throw new Error(errors.join("; "));
    step("ok");
  } catch (e) {
    for (const p of browser.contexts().flatMap((c) => c.pages())) {
      try { await p.screenshot({ path: `${ARTIFACTS}/failure-${Math.random().toString(36).slice(2)}.png` }); } catch (_) {}
    }
    console.error(e);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
