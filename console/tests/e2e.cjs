// The console end to end in headless Chromium (playwright-core), with an accessibility check
// (axe-core) on every screen. Run by cli/tests/console.rs against a running Switchboard with
// BASE, ANN_TOKEN, BOB_TOKEN, SUP_TOKEN, ADMIN_TOKEN, TICKET, TICKET_NUMBER, ORDER, WORD, ARTIFACTS, AXE set.
//
// Two agents on one ticket see each other; the second one's reply is refused until it takes
// the ticket over. A ticket is found by its order number and by a word of its third message. A
// supervisor saves a shared view, and a teammate sees it with its count once a macro applied to
// five tickets in bulk has tagged them. The supervisor drafts a rule, dry-runs it, enables it.
"use strict";
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const env = process.env;
const { BASE, ANN_TOKEN, BOB_TOKEN, SUP_TOKEN, ADMIN_TOKEN, TICKET, TICKET_NUMBER, ORDER, WORD, ARTIFACTS } = env;
const AXE = fs.readFileSync(env.AXE, "utf8");
const step = (m) => console.log(`[console ${new Date().toISOString()}] ${m}`);
const errors = [];

async function page(browser, who) {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const p = await ctx.newPage();
  p.on("pageerror", (e) => errors.push(`${who}: ${e.message}`));
  p.on("console", (m) => {
    // A CSP violation or a script error shows as a console error.
    if (m.type() === "error" && !/Failed to load resource: the server responded with a status of 409/.test(m.text())) {
      errors.push(`${who} console: ${m.text()}`);
    }
  });
  return p;
}

async function signIn(p, token) {
  await p.goto(`${BASE}/console/`);
  await p.fill("#token", token);
  await p.click("#signin button[type=submit]");
  await p.waitForSelector(".workspace");
  await p.waitForSelector('[data-view="my-open"]');
}

async function axe(p, screen) {
  // Evaluated through the DevTools protocol: the page's CSP stays strict.
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

async function search(p, q) {
  await p.fill("#search", q);
  await p.press("#search", "Enter");
  await p.waitForSelector(`#list-title:has-text("Search: ${q}")`);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const ann = await page(browser, "ann");
    await ann.goto(`${BASE}/console/`);
    await ann.waitForSelector("#token");
    await axe(ann, "signin");
    await shot(ann, "signin");
    await signIn(ann, ANN_TOKEN);
    await ann.waitForFunction(() => document.querySelector('[data-count="my-open"]')?.textContent === "6");
    await axe(ann, "views");

    step("ann finds the ticket by its order number, then by a word of its third message");
    await search(ann, ORDER);
    await ann.waitForSelector(`.tickets li[data-ticket="${TICKET}"]`);
    await search(ann, WORD);
    const hit = ann.locator(`.tickets li[data-ticket="${TICKET}"]`);
    await hit.waitFor();
    const marked = await hit.locator("mark").allTextContents();
    if (!marked.some((m) => m.toLowerCase().startsWith(WORD.toLowerCase().slice(0, 5)))) throw new Error(`no highlight: ${marked}`);
    await shot(ann, "search");
    await axe(ann, "search");
    await hit.locator("button.ticket").click();
    await ann.waitForSelector(`#ticket-title:has-text("${TICKET_NUMBER}")`);

    step("bob opens the same ticket: each sees the other");
    const bob = await page(browser, "bob");
    await signIn(bob, BOB_TOKEN);
    await search(bob, TICKET_NUMBER);
    await bob.locator(`.tickets li[data-ticket="${TICKET}"] button.ticket`).click();
    await bob.waitForSelector(`#ticket-title:has-text("${TICKET_NUMBER}")`);
    await ann.waitForSelector('.collision .viewing:has-text("bob@example.com")', { timeout: 20000 });
    await bob.waitForSelector('.collision .viewing:has-text("ann@example.com")', { timeout: 20000 });
    await bob.waitForSelector('.collision .held:has-text("ann@example.com")');
    step("bob types: ann sees it");
    await bob.click("#reply-text");
    await bob.keyboard.type("It left the depot this morning.");
    await ann.waitForSelector('.collision .typing:has-text("bob@example.com")', { timeout: 20000 });
    await shot(ann, "collision-ann");
    await axe(ann, "ticket");
    step("bob's reply is refused until he takes the ticket over");
    await bob.click(".reply button[type=submit]");
    await bob.waitForSelector('.takeover:has-text("ann@example.com")');
    await shot(bob, "takeover-bob");
    await axe(bob, "takeover");
    await bob.click(".takeover button");
    await bob.waitForSelector('.sent:has-text("Reply sent")');
    await bob.waitForSelector('.msg.outbound:has-text("It left the depot this morning.")');
    step("the take-over shows in the conversation; bob tags the ticket from the side panel");
    await bob.waitForSelector('.event:has-text("took it over to reply")');
    await bob.fill("#new-tag", "VIP customer");
    await bob.click('.side form.inline button[type=submit]');
    await bob.waitForSelector('.side .tags li:has-text("vip_customer")');
    await axe(bob, "ticket-actions");
    step("ann asks bob in an internal note: his console shows the mention");
    await ann.check(".reply input[type=checkbox]");
    // The mention is picked from the directory as ann types `@bo`.
    await ann.click("#reply-text");
    await ann.keyboard.type("@bo");
    await ann.waitForSelector('#mention-list li:has-text("bob@example.com")');
    await shot(ann, "mention-autocomplete");
    await axe(ann, "mention-autocomplete");
    await ann.keyboard.press("Enter");
    await ann.keyboard.type("can you check the carrier?");
    const note = await ann.inputValue("#reply-text");
    if (note !== "@bob@example.com can you check the carrier?") throw new Error(`the note reads ${JSON.stringify(note)}`);
    await ann.click(".reply button[type=submit]");
    await ann.waitForSelector('.sent:has-text("Note added")');
    await bob.waitForFunction(() => document.querySelector(".mentions .count")?.textContent === "1", null, { timeout: 20000 });
    await bob.click(".mentions summary");
    await bob.waitForSelector(".mentions li button");
    await axe(bob, "mentions");

    step("a supervisor shares a view; a macro in bulk fills it; a teammate sees its count");
    const sue = await page(browser, "sue");
    await signIn(sue, SUP_TOKEN);
    // A supervisor manages teams, not agents, tokens, sessions or the audit log.
    await sue.waitForSelector('.screens button:has-text("Teams")');
    if (await sue.locator('.screens button:has-text("Tokens"), .screens button:has-text("Agents")').count()) throw new Error("a supervisor sees admin screens");
    await sue.click(".views button.link");
    await sue.fill("#view-name", "Refunds");
    await sue.fill("#view-tag", "refund");
    await sue.check(".new-view input[type=checkbox]");
    await sue.click('.new-view button[type=submit]');
    await sue.waitForSelector('#list-title:has-text("Refunds")');
    await axe(sue, "new-view");
    await ann.click('[data-view="my-open"]');
    await ann.waitForFunction(() => document.querySelectorAll(".tickets li[data-ticket]").length === 5, null, { timeout: 30000 });
    await ann.check('.list header input[type=checkbox]');
    await ann.selectOption("#bulk-macro", { label: "Refund issued" });
    await ann.click('.bulk button[type=submit]');
    await ann.waitForSelector('.bulk-result:has-text("5 applied, 0 failed")');
    await shot(ann, "bulk-macro");
    await axe(ann, "bulk");

    step("the supervisor drafts a rule, dry-runs it over the last days and only then enables it");
    await sue.click('.screens button:has-text("Rules")');
    await sue.fill("#rule-name", "Refunds get a tag ✓");
    await sue.click('fieldset:has(legend:has-text("Every condition")) button:has-text("Add condition")');
    await sue.fill("#c-all-0-field", "message.text");
    await sue.selectOption("#c-all-0-op", "contains");
    await sue.fill("#c-all-0-value", "refund");
    if (!(await sue.locator('.rule-edit button:has-text("Enable")').isDisabled())) throw new Error("Enable before a dry run");
    await sue.click('.rule-edit button:has-text("Dry run")');
    await sue.waitForSelector('.dry-run [role=status]:has-text("it would have fired")');
    await sue.click('.rule-edit button:has-text("Enable")');
    await sue.waitForSelector('.roster tr[data-rule="Refunds get a tag ✓"] td:has-text("enabled")');
    await shot(sue, "rules");
    await axe(sue, "rules");
    await sue.click('.screens button:has-text("Tickets")');
    const bob2 = await page(browser, "bob again");
    await signIn(bob2, BOB_TOKEN);
    const refunds = bob2.locator('.views button.view:has-text("Refunds")');
    await refunds.waitFor();
    await bob2.waitForFunction(() => [...document.querySelectorAll(".views button.view")].some((b) => b.textContent.includes("Refunds") && b.querySelector(".count")?.textContent === "5"), null, { timeout: 30000 });
    await refunds.click();
    await bob2.waitForFunction(() => document.querySelectorAll(".tickets li[data-ticket]").length === 5);
    await shot(bob2, "shared-view-bob");

    step("bob splits the third message off into a new ticket, then hands the ticket to ann by name");
    await bob.check('.msg.inbound:has-text("lampshades") .split-pick input');
    await bob.click('.actions button:has-text("Split 1 into a new ticket")');
    await bob.waitForSelector('.sent:has-text("Split into T-")');
    await bob.waitForSelector('.msg.inbound:has-text("lampshades")', { state: "detached" });
    await bob.fill("#agent", "ann");
    await bob.waitForSelector("#agent-options option", { state: "attached" });
    const label = await bob.getAttribute("#agent-options option", "value");
    await bob.fill("#agent", label);
    await bob.click('.actions form.inline:has(#agent) button[type=submit]');
    await bob.waitForSelector('.sent:has-text("Assigned to ann@example.com")');
    await shot(bob, "handed-to-ann");
    await axe(bob, "assign-picker");

    step("the admin edits an agent, deactivates her and brings her back");
    const root = await page(browser, "admin");
    await signIn(root, ADMIN_TOKEN);
    await root.click('.screens button:has-text("Agents")');
    const dee = '.roster tr[data-agent="dee@example.com"]';
    await root.waitForSelector(dee);
    await axe(root, "agents");
    await root.click(`${dee} button:has-text("Edit")`);
    await root.fill("#agent-name", "Dee Åberg");
    await root.fill("#agent-max", "4");
    await root.click(".agent-form button[type=submit]");
    await root.waitForSelector('.sent:has-text("Saved Dee Åberg (version 2)")');
    await axe(root, "agent-edited");
    await root.click(`${dee} button:has-text("Deactivate")`);
    await root.click(`${dee} button:has-text("Confirm deactivation")`);
    await root.waitForSelector('.sent:has-text("Deactivated Dee Åberg")');
    await root.waitForSelector(dee, { state: "detached" });
    await root.check(".admin input[type=checkbox]");
    await root.waitForSelector(`${dee} button:has-text("Reactivate")`);
    await shot(root, "agents-deactivated");
    await axe(root, "agents-deactivated");
    await root.click(`${dee} button:has-text("Reactivate")`);
    await root.waitForSelector('.sent:has-text("Reactivated Dee Åberg")');

    step("the admin issues a read-only token, which reads and nothing else, and revokes it");
    await root.click('.screens button:has-text("Tokens")');
    await root.fill("#token-name", "Wall board ✓");
    await root.selectOption("#token-role", "supervisor");
    await root.selectOption("#token-scope", "read");
    await root.fill("#token-days", "7");
    await root.click(".agent-form button[type=submit]");
    await root.waitForSelector('.sent:has-text("Issued")');
    const wall = await root.inputValue("#issued-token");
    await shot(root, "tokens");
    await axe(root, "tokens");
    const as = (method, p, body) =>
      fetch(`${BASE}${p}`, { method, headers: { authorization: `Bearer ${wall}`, "content-type": "application/json" }, body: body && JSON.stringify(body) }).then((r) => r.status);
    const [reads, writes] = [await as("GET", "/v1/tickets?limit=1"), await as("POST", "/v1/views", { name: "x", filter: {} })];
    if (reads !== 200 || writes !== 403) throw new Error(`read-only token: GET ${reads}, POST ${writes}`);
    await root.click('.roster tr[data-token="Wall board ✓"] button:has-text("Revoke")');
    await root.waitForSelector('.sent:has-text("Revoked")');
    const after = await as("GET", "/v1/tickets?limit=1");
    if (after !== 401) throw new Error(`revoked token: GET ${after}`);

    step("the admin makes a team, puts ann in it by name and takes her out again");
    await root.click('.screens button:has-text("Teams")');
    await root.fill("#team-new-name", "Returns ✓");
    await root.fill("#team-new-skills", "returns, refunds");
    await root.click('.agent-form button:has-text("Create")');
    await root.waitForSelector('.team-edit h3:has-text("Returns ✓")');
    await root.fill("#team-add", "ann@");
    await root.waitForFunction(() => document.querySelectorAll("#team-candidates option").length > 0);
    await root.fill("#team-add", "ann@example.com");
    await root.click('.team-edit button:has-text("Add")');
    await root.waitForSelector('.members li[data-member="ann@example.com"]');
    await root.waitForSelector('.roster tr[data-team="Returns ✓"] td:nth-child(2):has-text("1")');
    await shot(root, "teams");
    await axe(root, "teams");
    await root.click('.members li[data-member="ann@example.com"] button');
    await root.waitForSelector('.members li:has-text("No members.")');

    step("the admin reads the audit log: the revocation and the agent's edit, before and after");
    await root.click('.screens button:has-text("Audit log")');
    await root.waitForSelector('.audit tr[data-action="token.revoked"]');
    await root.fill("#audit-action", "agent.updated");
    await root.click('.audit-filter button[type=submit]');
    // The unfiltered list has agent.updated too: wait for the filtered one to replace it.
    await root
      .waitForFunction(() => !document.querySelector('.audit tr[data-action="token.revoked"]'), null, { timeout: 10000 })
      .catch(async () => {
        const seen = await root.evaluate(() => [...document.querySelectorAll(".audit tr[data-action]")].map((r) => r.getAttribute("data-action")).join(","));
        const alert = await root.evaluate(() => document.querySelector(".admin [role=alert]")?.textContent ?? "");
        throw new Error(`the filter kept other actions: ${seen} ${alert}`);
      });
    await root.waitForSelector('.audit tr[data-action="agent.updated"]');
    await shot(root, "audit");
    await axe(root, "audit");
    step("the sessions screen lists no session for token sign-ins");
    await root.click('.screens button:has-text("Sessions")');
    await root.waitForSelector('#sessions-title');
    await root.waitForSelector('.roster td:has-text("No sessions.")');
    await axe(root, "sessions");

    step("keyboard: j opens the next ticket");
    await bob2.keyboard.press("j");
    await bob2.waitForSelector("#ticket-title");
    if (errors.length) throw new Error(errors.join("\n"));
    step("ok");
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  if (errors.length) console.error(errors.join("\n"));
  process.exit(1);
});
