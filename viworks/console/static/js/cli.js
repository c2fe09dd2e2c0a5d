// The viworks command line equivalent of what the page does (shown next to each action).

const SAFE = /^[A-Za-z0-9_@%+=:,./-]+$/;

export function sh(word) {
  const text = String(word);
  return SAFE.test(text) ? text : "'" + text.replace(/'/g, "'\\''") + "'";
}

/** ``viworks`` and its words, shell-quoted (``{raw}`` words as they are); null,
 * undefined, false and empty words are left out (optional flags). */
export function viworks(...words) {
  return [
    "viworks",
    ...words
      .filter((w) => w !== null && w !== undefined && w !== false && w !== "")
      .map((w) => (typeof w === "object" ? w.raw : sh(w))),
  ].join(" ");
}

/** ``key=value`` words for ``viworks run``/``job start``, typed as the CLI reads them;
 * secrets are never written out: the command line refers to a shell variable instead. */
export function argWords(args, params) {
  const words = [];
  for (const [name, value] of Object.entries(args)) {
    const spec = (params || {})[name] || {};
    if (spec.type === "secret") {
      words.push({ raw: `${name}="$${name.toUpperCase().replace(/[^A-Z0-9_]/g, "_")}"` });
    } else if (spec.type === "enum" && typeof value !== "string") {
      words.push(`${name}:=${JSON.stringify(value)}`);
    } else {
      words.push(`${name}=${value}`);
    }
  }
  return words;
}
