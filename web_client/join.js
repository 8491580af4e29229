// A join link opens the page of the invitee's role, keeping the token in the fragment.
import { claims, pageToken } from "./lib/api.js";

const PAGES = { operator: "/bedside", expert: "/expert", observer: "/expert", coordinator: "/" };
const token = pageToken();
const page = token && PAGES[claims(token)?.role];
if (page) location.replace(`${page}${location.search}#token=${encodeURIComponent(token)}`);
else document.getElementById("status").textContent = "This join link is not valid: ask for a new one.";
