// The libraries every module uses, from the vendored copies (make console-vendor).
import { h, render, Fragment } from "../vendor/preact.mjs";
import { useEffect, useMemo, useRef, useState } from "../vendor/hooks.mjs";
import { batch, computed, effect, signal, useSignal } from "../vendor/signals.mjs";
import htm from "../vendor/htm.mjs";

export const html = htm.bind(h);
export { batch, computed, effect, Fragment, h, render, signal, useEffect, useMemo, useRef, useSignal, useState };
