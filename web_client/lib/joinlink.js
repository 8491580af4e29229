// A join link as people pass it on: a short label, a Copy button and the server's QR code (a phone
// or tablet at the bedside scans it), instead of a 400-character URL wrapping over ten lines.
import { el } from "./dom.js";

// Copy `text`: the Clipboard API, else the old way from the (selected) text field; false if
// neither worked, so the page can say to copy it by hand.
async function copyText(text, field) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    field.select();
    try {
      return document.execCommand("copy");
    } catch {
      return false;
    }
  }
}

// made: the answer that created the link ({url, qr_svg, expires_at}); label: whose link it is
// ("Bedside (operator)"); role: the invitee's role (data-role, for tests and styles).
export function joinLink(made, { label, role }) {
  const field = el("input", { type: "text", readonly: true, class: "join-url", value: made.url,
    "aria-label": `${label}: the link itself (select it to copy it by hand)` });
  const copy = el("button", { type: "button", class: "join-copy", text: "Copy link" });
  copy.addEventListener("click", async () => {
    // Say whether it worked: a link the coordinator believes copied but is not gets lost.
    copy.textContent = (await copyText(made.url, field)) ? "Copied" : "Copy failed: select the text below";
  });
  const qr = made.qr_svg
    ? el("img", { class: "join-qr", alt: `QR code of the ${label} link: scan it with the phone or tablet that joins`,
      src: `data:image/svg+xml;charset=utf-8,${encodeURIComponent(made.qr_svg)}` })
    : null;
  const expires = made.expires_at ? `valid until ${new Date(made.expires_at).toLocaleString()}` : "";
  return el("div", { class: "join-link", "data-role": role },
    el("div", { class: "join-head" },
      el("strong", { text: label }), " ",
      el("a", { href: made.url, target: "_blank", rel: "noopener", "data-role": role, text: "Open" }), " ",
      copy),
    qr,
    el("p", { class: "muted", text: [qr ? "Scan the code with the device that joins" : "", expires].filter(Boolean).join(" · ") }),
    field);
}
