// Order actions and returns in the console, end to end in headless Chromium (playwright-core),
// with axe-core on every screen. Run by cli/tests/console_orders.rs against a running
// Switchboard and the stand-in shop, with BASE, AGENT_TOKEN, SUP_TOKEN, TICKET, ORDER_NAME,
// ARTIFACTS, AXE set.
//
// The agent opens the ticket, opens the customer's order beside it, refunds within its limit
// (done at the shop), refunds above it (waits for a supervisor), sends a replacement for the torn
// jacket (a new order at the shop) and starts a return for a
// damaged item (the policy leaves it to a person). The supervisor's Approvals screen lists
// both; the supervisor approves the refund (the shop refunds) and rejects the return with why.
"use strict";
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const env = process.env;
const { BASE, AGENT_TOKEN, SUP_TOKEN, TICKET, ORDER_NAME, ARTIFACTS } = env;
const AXE = fs.readFileSync(env.AXE, "utf8");
const step = (m) => console.log(`[orders ${new Date().toISOString()}] ${m}`);
const errors = [];

async function page(browser, who) {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  const p = await ctx.newPage();
  p.on("pageerror", (e) => errors.push(`${who}: ${e.message}`));
  p.on("console", (m) => {
    if (m.type() === "error") errors.push(`${who} console: ${m.text()}`);
  });
  return p;
}

async function signIn(p, token) {
  await p.goto(`${BASE}/console/`);
  await p.fill("#token", token);
  await p.click("#signin button[type=submit]");
  await p.waitForSelector(".workspace");
}

async function axe(p, screen) {
  await p.evaluate(AXE);
  const result = await p.evaluate(async () =>
    // eslint-disable-next-line no-undef
    (await axe.run(document, { resultTypes: ["violations"] })).violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help })),
  );
  fs.writeFileSync(path.join(ARTIFACTS, `axe-${screen}.json`), JSON.stringify(result, null, 2));
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) throw new Error(`axe on ${screen}: ${JSON.stringify(bad)}`);
  step(`axe ${screen}: ${result.length} minor or moderate, 0 serious`);
}

const shot = (p, name) => p.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });

(async () => {
  const browser = await chromium.launch({
    executablePath: env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    step("the agent opens the ticket and the customer's order beside it");
    const agent = await page(browser, "agent");
    await signIn(agent, AGENT_TOKEN);
    await agent.locator(`.tickets li[data-ticket="${TICKET}"] button.ticket`).click();
    const order = agent.locator(`details.order:has(summary:has-text("${ORDER_NAME}"))`);
    await order.locator("summary").click();
    await order.locator(".lines li").first().waitFor();
    await axe(agent, "order-panel");

    step("a refund within the agent's limit is done at the shop");
    await order.locator('.order-buttons button:has-text("Refund")').click();
    await order.locator('input[id^="amount-"]').fill("20.00");
    await order.locator('form button[type=submit]:has-text("Refund")').click();
    await order.locator('[role=status]:has-text("refund done at the shop")').waitFor();
    await order.locator('.actions li[data-state="done"]:has-text("asked by you")').waitFor();

    step("a refund above it waits for a supervisor");
    await order.locator('.order-buttons button:has-text("Refund")').click();
    await order.locator('input[id^="amount-"]').fill("80.00");
    await order.locator('form button[type=submit]:has-text("Refund")').click();
    await order.locator(`[role=status]:has-text("waits for a supervisor")`).waitFor();
    await order.locator('.actions li[data-state="awaiting_approval"]').waitFor();

    step("a bad amount is named before anything is sent");
    await order.locator('.order-buttons button:has-text("Refund")').click();
    await order.locator('input[id^="amount-"]').fill("-5");
    await order.locator('form button[type=submit]:has-text("Refund")').click();
    await order.locator('[role=alert]:has-text("amount")').waitFor();

    // One shirt (20.00) is within the agent's limit; the jacket (80.00) would wait for a
    // supervisor like a refund above it.
    step("a replacement for a shirt goes out as a new order at the shop");
    await order.locator('.order-buttons button:has-text("Send a replacement")').click();
    await order.locator('input[id^="sq-"]').nth(0).fill("1");
    await order.locator('input[id^="swhy-"]').fill("arrived torn — replacing it");
    await order.locator('form button[type=submit]:has-text("Send the replacement")').click();
    await order.locator('[role=status]:has-text("replacement sent: order #R")').waitFor();

    step("a return of a damaged item is left to a person");
    await order.locator('.order-buttons button:has-text("Start a return")').click();
    await order.locator('input[id^="rq-"]').first().fill("1");
    await order.locator('select[id^="rreason-"]').selectOption("damaged");
    await order.locator('form button[type=submit]:has-text("Start the return")').click();
    await order.locator('[role=status]:has-text("requested")').waitFor();
    await order.locator('.returns li[data-status="requested"]').waitFor();
    await shot(agent, "order-actions");
    await axe(agent, "order-actions");

    step("the supervisor approves the refund and rejects the return, with why");
    const sue = await page(browser, "sue");
    await signIn(sue, SUP_TOKEN);
    await sue.click('.screens button:has-text("Approvals")');
    const actionRow = sue.locator(`.approvals tr:has-text("${ORDER_NAME}"):has-text("refund")`);
    await actionRow.waitFor();
    // Who asked, by name (the agent's name here is its email).
    await actionRow.locator('td:has-text("@example.com")').waitFor();
    const returnRow = sue.locator(`.approvals tr:has-text("RMA-")`);
    await returnRow.waitFor();
    await shot(sue, "approvals");
    await axe(sue, "approvals");
    await actionRow.locator('button:has-text("Approve")').click();
    await sue.locator('.approvals [role=status]:has-text("refund on")').waitFor();
    await sue.locator('.approvals [role=status]:has-text("done")').waitFor();
    await returnRow.locator("input").fill("The photos show wear, not transport damage — please write back with more photos.");
    await returnRow.locator('button:has-text("Reject")').click();
    await sue.locator('.approvals [role=status]:has-text("rejected")').waitFor();
    await sue.locator(".approvals p:has-text('nothing waits')").nth(1).waitFor();
    await shot(sue, "approvals-done");
    await axe(sue, "approvals-done");

    step("the agent sees the approved refund done");
    await order.locator("summary").click();
    await order.locator("summary").click();
    await agent.waitForFunction(() => document.querySelectorAll('details.order .actions li[data-state="done"]').length === 3, null, { timeout: 20000 });
    await order.locator('.returns li[data-status="rejected"]').waitFor();
    if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
    step("done");
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
