// Hash routes (#/agents/gw-1): the server only ever serves /ui/.
import { signal } from "./lib.js";

function parse() {
  const raw = location.hash.replace(/^#/, "") || "/agents";
  const [path, search] = raw.split("?");
  return {
    path,
    parts: path.split("/").filter(Boolean).map(decodeURIComponent),
    query: new URLSearchParams(search || ""),
  };
}

export const route = signal(parse());
addEventListener("hashchange", () => {
  route.value = parse();
});

/** ``#/a/b`` from path parts (each encoded), plus an optional query object. */
export function link(parts, params) {
  const path = "#/" + parts.map((p) => encodeURIComponent(p)).join("/");
  const pairs = Object.entries(params || {}).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return pairs.length ? path + "?" + new URLSearchParams(pairs) : path;
}

export function go(parts, params) {
  location.hash = link(parts, params);
}

/** Replace the query of the current route without a new history entry. */
export function setQuery(params) {
  const url = link(route.value.parts, params);
  history.replaceState(null, "", url);
  route.value = parse();
}
