// The door of every page: its token is asked about (GET /api/session) before the page shows or
// starts anything. A refused token (none, malformed, expired, access ended, the wrong page) gets
// the reason and what to do, in place of the whole page: none of its tools, no camera, no room.
import { api, ApiError, claims, pageToken } from "./api.js";
import { $, el } from "./dom.js";

const RETRY_MS = 3000;
const NEW_LINK = "Ask the coordinator for a new link.";

// Who each page is for. consultation: a consultation's join token (true), an expert's own or a
// coordinator's token (false), or either (undefined).
const PAGES = {
  start: { roles: ["coordinator"], what: "the coordinator's request page", consultation: false },
  setup: { roles: ["coordinator"], what: "the device setup page", consultation: false },
  quality: { roles: ["coordinator"], what: "the second-opinion ledger", consultation: false },
  queue: { roles: ["coordinator", "expert"], what: "the queue", consultation: false },
  bedside: { roles: ["operator"], what: "the bedside page", consultation: true },
  expert: { roles: ["expert", "observer"], what: "the expert page", consultation: true },
  join: { roles: ["operator", "expert", "observer", "coordinator"], what: "a join link" },
};

// What to do, by the server's refusal code (docs/protocol.md); the reason is the server's message.
const ADVICE = {
  token_expired: ["This link has expired.", NEW_LINK],
  token_not_yet_valid: ["This link is not valid yet.", "Check this device's date and time, then reload."],
  consultation_cancelled: ["The consultation was cancelled.", "Nothing more can be done with this link."],
  consultation_signed: ["The report has been signed: this consultation is closed.", "Nothing more can be done with this link."],
  expert_reassigned: ["The consultation was given to another expert.", "Ask the coordinator if you should still read it."],
  expert_deactivated: ["Your expert credentials are no longer active.", "Ask a coordinator to register them again."],
  not_credentialed: ["No active expert credentials are registered for you.", "Ask a coordinator to register your subspecialties."],
  consultation_not_found: ["This link's consultation does not exist.", NEW_LINK],
};
// A link that was cut short, altered or signed by another server.
const DAMAGED = ["This link is not valid: it may be incomplete.", "Open the whole link, or scan its QR code again; if it still fails, ask the coordinator for a new one."];

// The page's elements named in `keep` (e.g. the server's health) stay, in a plain header.
let kept = [];

function refuse([reason, todo], extra = null) {
  document.title = "probelink — link refused";
  const header = el("header", { class: "bar" }, el("h1", { text: "probelink" }), ...kept.map($).filter(Boolean));
  document.body.replaceChildren(header,
    el("main", { class: "refused", id: "refused", role: "alert" },
      el("h1", { text: "This link cannot be used" }),
      el("p", { id: "refusal-reason", text: reason }),
      el("p", { id: "refusal-todo", text: todo }),
      extra));
}

function roleMismatch(page, role, scoped, token) {
  const right = Object.values(PAGES)
    .find((p) => p !== page && p.roles.includes(role) && p.consultation === scoped)?.what || "another page";
  refuse([`This is ${/^[aeiou]/.test(role) ? "an" : "a"} ${role}'s link: it does not open ${page.what}.`,
    `It opens ${right}: use the link itself, as you were sent it.`],
    el("p", {}, el("a", { href: `/join#token=${encodeURIComponent(token)}`, text: "Open it where it belongs" })));
}

// Resolves with {token, claims, session} once the server accepts the page's token; when it is
// refused, the page is replaced by the reason and the promise never resolves, so the page's code
// after `await admit(...)` never runs. keep: ids of elements that stay (informative, not tools).
export async function admit(pageName, { keep = [] } = {}) {
  const page = PAGES[pageName];
  kept = keep;
  const token = pageToken();
  const said = token && claims(token);
  if (!token) {
    refuse([`This page opens from a link that carries your access (${page.what}).`, "Open the link you were sent, or scan its QR code."]);
    return new Promise(() => {});
  }
  if (!said || typeof said.role !== "string") {
    refuse(DAMAGED);
    return new Promise(() => {});
  }
  const scoped = typeof said.consultation === "string";
  if (!page.roles.includes(said.role) || (page.consultation !== undefined && page.consultation !== scoped)) {
    roleMismatch(page, said.role, scoped, token);
    return new Promise(() => {});
  }
  for (;;) {
    try {
      const session = await api(token, "/api/session");
      return { token, claims: said, session };
    } catch (error) {
      if (!(error instanceof ApiError) || error.status === 0 || error.status >= 500) {
        // Not a refusal: the server is down or busy. Ask again.
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
        continue;
      }
      refuse(ADVICE[error.code] || (error.status === 401 ? DAMAGED : [`${error.message}.`, NEW_LINK]));
      return new Promise(() => {});
    }
  }
}
