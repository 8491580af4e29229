// A join link opens the page of the invitee's role, keeping the token in the fragment; an
// expert's own (reading-room) link opens their queue. A refused link says why (lib/gate.js).
import { admit } from "./lib/gate.js";

const PAGES = { operator: "/bedside", expert: "/expert", observer: "/expert", coordinator: "/" };
const { token, claims } = await admit("join");
const page = claims.role === "expert" && !claims.consultation ? "/queue" : PAGES[claims.role];
location.replace(`${page}${location.search}#token=${encodeURIComponent(token)}`);
