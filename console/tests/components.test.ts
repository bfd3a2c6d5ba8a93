// Component tests (Vitest + @vue/test-utils in jsdom): what an agent reads is text, never markup;
// the collision warning names the right people; counts show beside their views.
import { describe, expect, it } from "vitest";
import { flushPromises, mount } from "@vue/test-utils";
import Snippet from "../src/components/Snippet.vue";
import Collision from "../src/components/Collision.vue";
import ViewList from "../src/components/ViewList.vue";
import OrderPanel from "../src/components/OrderPanel.vue";
import { Api, type S, type View, type Viewer } from "../src/api/client";

describe("Snippet", () => {
  it("marks the matching parts and renders hostile text as text", () => {
    const w = mount(Snippet, {
      props: {
        parts: [
          { text: "the <img src=x onerror=alert(1)> ", hit: false },
          { text: "refund", hit: true },
          { text: " for Zoë ✉", hit: false },
        ],
      },
    });
    expect(w.findAll("mark").map((m) => m.text())).toEqual(["refund"]);
    expect(w.find("img").exists()).toBe(false);
    expect(w.text()).toContain("<img src=x onerror=alert(1)>");
    expect(w.text()).toContain("Zoë ✉");
  });

  it("renders nothing for no parts", () => {
    expect(mount(Snippet, { props: { parts: null } }).text()).toBe("");
  });
});

const viewer = (agent_id: string, name: string, state: string, expiresIn = 20_000): Viewer => ({
  agent_id,
  name,
  state,
  seen_at: new Date().toISOString(),
  expires_at: new Date(Date.now() + expiresIn).toISOString(),
});

describe("Collision", () => {
  it("names who else is viewing and typing, not me, and not lapsed presences", () => {
    const w = mount(Collision, {
      props: {
        viewers: [viewer("me", "Ann", "viewing"), viewer("b", "Bob", "typing"), viewer("c", "Cy", "viewing"), viewer("d", "Gone", "viewing", -1)],
        me: "me",
        assignee: "me",
        assigneeName: "Ann",
        now: Date.now(),
      },
    });
    expect(w.find(".typing").text()).toBe("Bob is typing a reply");
    expect(w.find(".viewing").text()).toBe("Cy is viewing this ticket");
    expect(w.text()).not.toContain("Gone");
    expect(w.text()).not.toContain("Ann");
    expect(w.find(".held").exists()).toBe(false);
  });

  it("warns that someone else's ticket needs a take-over, and is silent when alone", () => {
    const held = mount(Collision, {
      props: { viewers: [], me: "me", assignee: "b", assigneeName: "Bob", now: Date.now() },
    });
    expect(held.find(".held").text()).toContain("Assigned to Bob");
    const alone = mount(Collision, {
      props: { viewers: [viewer("me", "Ann", "typing")], me: "me", assignee: "me", assigneeName: "Ann", now: Date.now() },
    });
    expect(alone.find(".collision").exists()).toBe(false);
  });
});

describe("ViewList", () => {
  it("shows each view's count, marks the open one and says when a count is capped", async () => {
    const views = [
      { id: "my-open", name: "My open", scope: "builtin" },
      { id: "all-open", name: "All open", scope: "builtin" },
    ] as unknown as View[];
    const w = mount(ViewList, {
      props: {
        api: new Api("t"),
        me: { role: "agent", agent_id: "a", token_id: "t" },
        views,
        counts: [
          { id: "my-open", count: 3, more: false },
          { id: "all-open", count: 10000, more: true },
        ],
        selected: "my-open",
      },
    });
    expect(w.find('[data-count="my-open"]').text()).toBe("3");
    expect(w.find('[data-count="all-open"]').text()).toBe("10000+");
    expect(w.find('[aria-current="page"]').text()).toContain("My open");
    await w.find('[data-view="all-open"]').trigger("click");
    expect(w.emitted("select")?.[0]).toEqual(["all-open"]);
    // An agent does not get the "share with everyone" choice.
    await w.find("button.link").trigger("click");
    expect(w.text()).not.toContain("Share with everyone");
  });
});

describe("OrderPanel", () => {
  // The client's calls, answered from memory: the component's own logic under test.
  class Recorded extends Api {
    calls: string[] = [];
    constructor(private detail: S["OrderDetail"]) {
      super("t");
    }
    order = async (id: string) => {
      this.calls.push(`order ${id}`);
      return this.detail;
    };
    refund = async (id: string, body: S["RefundInput"]) => {
      this.calls.push(`refund ${id} ${body.amount_cents} ${body.request_key ? "keyed" : "unkeyed"}`);
      return { ...action, state: "awaiting_approval", amount_cents: body.amount_cents ?? null };
    };
  }
  const action = {
    id: "a1", order_id: "o1", order_number: "#1", kind: "refund", params: {}, amount_cents: 100, currency: "EUR", state: "done",
    requested_by: "ann", request_key: "k", attempts: 1, result: {}, created_at: "", updated_at: "",
  } as unknown as S["OrderAction"];
  const detail = {
    id: "o1", external_id: "1", number: "#1", customer_id: "c", total_cents: 12345, currency: "EUR", financial_status: "paid",
    fulfillment_status: null, cancelled_at: null, tags: [], shipping_address: {}, created_at: "",
    fulfillments: [{ tracking_company: "DHL", tracking_number: "JD1", tracking_url: "javascript:alert(1)", shipment_status: "in_transit" }],
    line_items: [{ id: 11, title: "<b>Zoë's</b> shirt ✂", quantity: 2, price: "20.00" }],
    actions: [], returns: [],
  } as unknown as S["OrderDetail"];

  async function opened(api: Recorded) {
    const w = mount(OrderPanel, { props: { api, me: { role: "agent", agent_id: "a", token_id: null }, orderId: "o1", label: "#1 · paid", ticketId: "t1" } });
    const d = w.find("details").element as HTMLDetailsElement;
    d.open = true;
    await w.find("details").trigger("toggle");
    await flushPromises();
    return w;
  }

  it("shows the order's lines as text and links only https tracking pages", async () => {
    const api = new Recorded(detail);
    const w = await opened(api);
    expect(api.calls).toEqual(["order o1"]);
    expect(w.find(".lines").text()).toContain("2 × <b>Zoë's</b> shirt ✂");
    expect(w.find(".lines b").exists()).toBe(false);
    expect(w.find(".parcels a").exists()).toBe(false);
    expect(w.find(".meta").text()).toContain("123.45 EUR");
  });

  it("names a bad amount without asking the shop, and says when a refund waits for approval", async () => {
    const api = new Recorded(detail);
    const w = await opened(api);
    await w.find(".order-buttons button").trigger("click");
    await w.find('input[id^="amount-"]').setValue("-5");
    await w.find("form").trigger("submit");
    expect(w.find("[role=alert]").text()).toContain("amount");
    expect(api.calls.filter((c) => c.startsWith("refund"))).toEqual([]);
    await w.find('input[id^="amount-"]').setValue("80.50");
    await w.find("form").trigger("submit");
    await flushPromises();
    expect(api.calls).toContain("refund o1 8050 keyed");
    expect(w.find("[role=status]").text()).toContain("waits for a supervisor's approval");
  });
});
